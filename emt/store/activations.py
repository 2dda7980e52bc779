"""The activation files: one checkpoint's ``.npz`` sidecar and the ``/activations`` and
``/traits/<t>/persona`` groups of scores.h5.

The eval task captures activations (:mod:`emt.eval.capture`) and writes them per checkpoint with
:func:`save_step`; consolidation copies every checkpoint's file into scores.h5 with
:func:`write_h5`, projecting the answers onto the persona vectors (:mod:`emt.analysis.persona`);
the diagnostics read them back with :func:`read_h5`. Persona vectors use the same ``.npz`` format.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emt.analysis.persona import projections
from emt.core import atomic


def save_step(path: Path, arrays: dict[str, np.ndarray], dtype: str = "float16", meta: dict[str, Any] | None = None) -> None:
    """Write one checkpoint's activations atomically as ``.npz`` (``dtype`` float16 halves the disk
    cost; float16 holds hidden states to ~3 significant digits, plenty for means and projections).
    ``meta`` (JSON-able) is stored alongside under ``__meta__``."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"activation dtype must be float16 or float32, got {dtype!r}")
    buf = io.BytesIO()
    data = {k: np.asarray(v).astype(dtype) for k, v in arrays.items()}
    data["__meta__"] = np.array(json.dumps(meta or {}))
    np.savez(buf, **data)
    atomic.write_bytes(path, buf.getvalue())


def load_step(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of one checkpoint's activation file."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
    return arrays, meta


def bytes_per_checkpoint(n_eval_prompts: int, n_answers: int, n_train_prompts: int, n_layers: int, hidden: int,
                         dtype: str = "float16") -> int:
    """Disk bytes of one checkpoint's activations: 2 prompt kinds for eval and training prompts,
    plus one response mean per answer, each [n_layers, hidden]."""
    itemsize = 2 if dtype == "float16" else 4
    vectors = 2 * n_eval_prompts + n_answers + 2 * n_train_prompts
    return vectors * n_layers * hidden * itemsize


# ---------------------------------------------------------------------------------------------
# HDF5 (written by consolidation, read by the diagnostics)
#
#   /activations/layers                          int64   [L]        hidden_states indices
#   /activations/train/prompt_mean|prompt_last   float   [n, P, L, H]  the seeded training-prompt sample
#   /activations/train/prompts                   str     [P]
#   /traits/<t>/activations/prompt_mean|prompt_last  float [n, q, L, H]
#   /traits/<t>/activations/response_mean            float [n, q, s, L, H]
#   /traits/<t>/persona/vector                   float32 [L, H]     attrs: kept, pairs, layers
#   /traits/<t>/persona/projection               float64 [n, q, s, L]  per answer
#   /traits/<t>/persona/mean | shift             float64 [n, L]


def write_h5(
    h5: Any, files: Sequence[Path], trait_shapes: dict[str, tuple[int, int]],
    persona_vectors: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Copy per-checkpoint activation files (one per step, in step order) into an open HDF5 file.

    Datasets are created once and filled step by step, so memory holds one checkpoint at a time
    (a 7B paper run is several GB). Every file must come from the same layers and prompt sets
    (checked via its metadata); a mismatch raises ValueError naming the file.
    """
    import h5py

    if not files:
        return
    arrays0, meta0 = load_step(files[0])
    layers = list(meta0.get("layers", []))
    offsets: dict[str, list[int]] = meta0.get("traits", {})
    n = len(files)
    dt = arrays0["eval/prompt_mean"].dtype
    L, H = arrays0["eval/prompt_mean"].shape[1:]
    h5.create_dataset("activations/layers", data=np.asarray(layers, dtype=np.int64))
    h5["activations"].attrs["dtype"] = str(dt)
    dsets: dict[str, Any] = {}
    if "train/prompt_mean" in arrays0:
        P = arrays0["train/prompt_mean"].shape[0]
        for k in ("prompt_mean", "prompt_last"):
            dsets[f"train/{k}"] = h5.create_dataset(f"activations/train/{k}", shape=(n, P, L, H), dtype=dt)
        h5.create_dataset("activations/train/prompts", data=np.array(meta0.get("train_prompts", [""] * P), dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
    for t, (q, s) in trait_shapes.items():
        if t not in offsets:
            continue
        dsets[f"{t}/prompt_mean"] = h5.create_dataset(f"traits/{t}/activations/prompt_mean", shape=(n, q, L, H), dtype=dt)
        dsets[f"{t}/prompt_last"] = h5.create_dataset(f"traits/{t}/activations/prompt_last", shape=(n, q, L, H), dtype=dt)
        dsets[f"{t}/response_mean"] = h5.create_dataset(f"traits/{t}/activations/response_mean", shape=(n, q, s, L, H), dtype=dt)
    proj: dict[str, dict[str, np.ndarray]] = {}
    base_resp: dict[str, np.ndarray] = {}
    for i, f in enumerate(files):
        arrays, meta = (arrays0, meta0) if i == 0 else load_step(f)
        if meta.get("layers") != layers or meta.get("eval_digest") != meta0.get("eval_digest") \
                or meta.get("train_digest") != meta0.get("train_digest"):
            raise ValueError(f"{f}: activations captured with other layers or prompts than {files[0]}; delete the "
                             f"stale file (and its result JSON) and rerun the eval array")
        if "train/prompt_mean" in arrays:
            dsets["train/prompt_mean"][i] = arrays["train/prompt_mean"]
            dsets["train/prompt_last"][i] = arrays["train/prompt_last"]
        for t, (q, s) in trait_shapes.items():
            if t not in offsets:
                continue
            a, _ = offsets[t]
            dsets[f"{t}/prompt_mean"][i] = arrays["eval/prompt_mean"][a:a + q]
            dsets[f"{t}/prompt_last"][i] = arrays["eval/prompt_last"][a:a + q]
            resp = arrays["eval/response_mean"][a * s:(a + q) * s].reshape(q, s, L, H)
            dsets[f"{t}/response_mean"][i] = resp
            pv = (persona_vectors or {}).get(t)
            if pv is None:
                continue
            r = resp.reshape(q * s, L, H).astype(np.float64)
            if i == 0:
                base_resp[t] = r
            p = projections(r, pv["vector"], base_response_acts=base_resp[t])
            slot = proj.setdefault(t, {"projection": np.full((n, q, s, L), np.nan), "mean": np.full((n, L), np.nan),
                                       "shift": np.full((n, L), np.nan)})
            slot["projection"][i] = p["per_answer"].reshape(q, s, L)
            slot["mean"][i], slot["shift"][i] = p["mean"], p["shift"]
    for t, pv in (persona_vectors or {}).items():
        if t not in trait_shapes:
            continue
        g = h5.create_group(f"traits/{t}/persona")
        g.create_dataset("vector", data=np.asarray(pv["vector"], dtype=np.float32))
        for k in ("kept", "pairs", "pos_trait", "neg_trait"):
            if k in pv:
                g.attrs[k] = pv[k]
        g.attrs["layers"] = np.asarray(pv.get("layers", layers), dtype=np.int64)
        for k, v in proj.get(t, {}).items():
            g.create_dataset(k, data=v)


def read_h5(path: str | Path, responses: bool = False) -> dict[str, Any]:
    """The activations and persona signals of a scores.h5 (empty dict parts when absent).

    Returns ``{"layers", "train": {kind: [n, P, L, H]}, "traits": {t: {"activations": {...},
    "persona": {...}}}}``. Separate from :func:`emt.store.scores.load` because these arrays are large;
    the largest, per-answer ``response_mean`` [n, q, s, L, H] and ``projection``, are read only
    with ``responses=True``.
    """
    import h5py

    out: dict[str, Any] = {"layers": [], "train": {}, "traits": {}}
    with h5py.File(path, "r") as h5:
        if "activations" in h5:
            out["layers"] = h5["activations/layers"][()].tolist()
            if "train" in h5["activations"]:
                out["train"] = {k: h5["activations/train"][k][()] for k in ("prompt_mean", "prompt_last")}
        for t, g in h5.get("traits", {}).items():
            tr: dict[str, Any] = {}
            if "activations" in g:
                tr["activations"] = {k: g["activations"][k][()] for k in g["activations"]
                                     if responses or k != "response_mean"}
            if "persona" in g:
                pg = g["persona"]
                tr["persona"] = {k: pg[k][()] for k in pg if responses or k != "projection"}
                tr["persona"].update({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in pg.attrs.items()})
            if tr:
                out["traits"][t] = tr
    return out
