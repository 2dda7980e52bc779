"""Measured cluster profiles (``cluster.profile``): the JSON ``bench/gpu_check.py`` writes.

Config validation checks a profile can be read (:func:`profile_problems`); the planner reads its
figures (:func:`load_profile`) for training and evaluation rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILE_SCHEMA = 1


class ProfileError(ValueError):
    """A measured profile (``cluster.profile``) that cannot be used; the message says why and how
    to fix it."""


@dataclass(frozen=True)
class Profile:
    """Measured figures from ``bench/gpu_check.py`` (its JSON's ``profile`` block)."""

    path: str
    device: str
    date: str
    mode: str  # "gpu" or "cpu-tiny"
    train_tflops: dict[str, float]  # "lora", "full:zero3", "full:zero2": achieved TFLOP/s
    eval_s_per_checkpoint: float | None  # transformers backend, at the measured workload below
    eval_capture_s: float | None
    eval_sequences: int | None
    eval_max_new_tokens: int | None
    eval_batch_size: int | None
    vllm_s_per_checkpoint: float | None = None
    vllm_sequences: int | None = None
    vllm_max_new_tokens: int | None = None

    def label(self) -> str:
        return f"profile {self.path} ({self.device}, {self.date}{', CPU tiny form' if self.mode != 'gpu' else ''})"


def load_profile(path: str | Path) -> Profile:
    """Read a profile: ``bench/gpu_check.py``'s ``gpu_check.json`` (or its ``profile`` block alone).

    Raises :class:`ProfileError` naming the file, the key and the fix.
    """
    p = Path(path)
    fix = "run bench/gpu_check.py on the GPU (docs/performance.md) and point cluster.profile at its gpu_check.json"
    if not p.is_file():
        raise ProfileError(f"cluster.profile: {p}: no such file ({fix}, or set cluster.profile: null to use "
                           f"cluster.gpu_tflops)")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cluster.profile: {p}: not JSON ({exc}); {fix}") from None
    prof = data.get("profile", data) if isinstance(data, dict) else None
    if not isinstance(prof, dict) or prof.get("schema") != PROFILE_SCHEMA:
        raise ProfileError(f"cluster.profile: {p}: no 'profile' block of schema {PROFILE_SCHEMA} "
                           f"(got {prof.get('schema') if isinstance(prof, dict) else type(prof).__name__}); {fix}")
    problems: list[str] = []

    def num(d: Any, key: str, where: str) -> float | None:
        v = d.get(key) if isinstance(d, dict) else None
        if v is None:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            problems.append(f"{where}.{key}: must be a number > 0, got {v!r}")
            return None
        return float(v)

    train: dict[str, float] = {}
    raw_train = prof.get("train") or {}
    if not isinstance(raw_train, dict):
        problems.append(f"profile.train: must be a mapping, got {type(raw_train).__name__}")
        raw_train = {}
    for key, d in raw_train.items():
        v = num(d, "achieved_tflops", f"profile.train.{key}")
        if v is not None:
            train[key] = v
    ev = prof.get("eval") or {}
    vl = prof.get("eval_vllm") or {}
    e_s = num(ev, "s_per_checkpoint", "profile.eval")
    e_seq = num(ev, "sequences", "profile.eval")
    e_tok = num(ev, "max_new_tokens", "profile.eval")
    e_bs = num(ev, "batch_size", "profile.eval")
    if e_s is not None and None in (e_seq, e_tok, e_bs):
        problems.append("profile.eval: s_per_checkpoint needs sequences, max_new_tokens and batch_size beside it")
    v_s = num(vl, "s_per_checkpoint", "profile.eval_vllm")
    v_seq = num(vl, "sequences", "profile.eval_vllm")
    v_tok = num(vl, "max_new_tokens", "profile.eval_vllm")
    if problems:
        raise ProfileError(f"cluster.profile: {p}: " + "; ".join(problems) + f" ({fix})")
    return Profile(str(p), str(prof.get("device") or "?"), str(prof.get("date") or "?"), str(prof.get("mode") or "?"),
                   train, e_s, num(ev, "capture_s", "profile.eval"), int(e_seq) if e_seq else None,
                   int(e_tok) if e_tok else None, int(e_bs) if e_bs else None,
                   v_s, int(v_seq) if v_seq else None, int(v_tok) if v_tok else None)


def profile_problems(path: str | None) -> list[str]:
    """For config validation: why ``cluster.profile`` cannot be used (empty when it can)."""
    if path is None:
        return []
    try:
        load_profile(path)
    except ProfileError as exc:
        return [str(exc)]
    return []
