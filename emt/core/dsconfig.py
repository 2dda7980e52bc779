"""DeepSpeed configs: short names, resolution, and checks made before anything is submitted.

``training.deepspeed`` is either a short name of a JSON file shipped under
``configs/deepspeed/`` (see its README for what each holds and why) or the path of a DeepSpeed
JSON file. The shipped files leave batch sizes, precision and optimizer hyperparameters as
``"auto"`` so that transformers fills them in from the training config: one file serves a CPU
run (fp32) and a GPU run (bf16) alike.

This module imports neither torch nor deepspeed: the launcher checks configs on a login node.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from emt.core import paths


class TrainingLike(Protocol):
    """The training settings :func:`problems` reads (``emt.core.config.TrainingConfig`` has them);
    a protocol so that this module does not import the config module, which imports it."""

    # Read-only properties: the config dataclasses are frozen.
    @property
    def deepspeed(self) -> str | None: ...
    @property
    def method(self) -> str: ...
    @property
    def per_device_batch_size(self) -> int: ...
    @property
    def grad_accum(self) -> int: ...

DEEPSPEED_DIR = paths.deepspeed_dir()  # the checkout's configs/deepspeed, or an installed wheel's copy
SHORT_NAMES = ("zero2", "zero3", "zero3_offload")
# Keys transformers fills from the training config; a number here must agree with ours, or
# transformers stops at start-up with a mismatch error (after the job waited in the queue).
_MUST_AGREE = {"train_micro_batch_size_per_gpu": "per_device_batch_size", "gradient_accumulation_steps": "grad_accum"}


def resolve(value: str) -> Path:
    """The JSON file of a short name or a path (relative paths are from the current directory).

    Raises ValueError naming the valid short names when ``value`` is neither.
    """
    if value in SHORT_NAMES:
        return DEEPSPEED_DIR / f"{value}.json"
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    raise ValueError(f"{value!r} is neither a short name ({', '.join(SHORT_NAMES)}: configs/deepspeed/) "
                     f"nor an existing JSON file; use one of those names or the path of a DeepSpeed JSON config")


def load(value: str) -> dict[str, Any]:
    """The parsed JSON of a short name or path (ValueError with the reason if it cannot be read)."""
    path = resolve(value)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); DeepSpeed configs cannot hold "
                         f"comments (document them in a README next to the file)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    return data


def zero_stage(data: dict[str, Any]) -> int:
    """The ZeRO stage of a parsed config (0 when it has no zero_optimization section)."""
    zero = data.get("zero_optimization") or {}
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0


def content_hash(value: str) -> str:
    """A short digest of the config's content (for the run hash: an edited file is a new run)."""
    blob = json.dumps(load(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def problems(training: TrainingLike) -> list[str]:
    """Why ``training.deepspeed`` cannot work with this training config (empty when it can).

    Messages start with the key they concern, like the rest of config validation.
    """
    if training.deepspeed is None:
        return []
    key = "training.deepspeed"
    try:
        data = load(training.deepspeed)
    except ValueError as exc:
        return [f"{key}: {exc}"]
    out: list[str] = []
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [f"{key}: {training.deepspeed}: zero_optimization must be a JSON object"]
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        out.append(f"{key}: {training.deepspeed}: zero_optimization.stage must be 0, 1, 2 or 3; got {stage!r}")
    if stage == 3 and training.method == "full" and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        out.append(f"{key}: {training.deepspeed}: ZeRO-3 full fine-tuning needs "
                   f'"stage3_gather_16bit_weights_on_model_save": true in zero_optimization, otherwise '
                   f"checkpoints hold no model.safetensors that evaluation can load (use zero3)")
    for ds_key, ours in _MUST_AGREE.items():
        v = data.get(ds_key, "auto")
        if v != "auto" and v != getattr(training, ours):
            out.append(f"{key}: {training.deepspeed}: {ds_key}={v!r} disagrees with training.{ours}="
                       f"{getattr(training, ours)}; set it to \"auto\" (transformers fills it in)")
    return out
