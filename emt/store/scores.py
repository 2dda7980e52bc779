"""Scores in HDF5: one file per run, ``<run dir>/scores.h5``, written by consolidation only.

Evaluation tasks write one JSON result per checkpoint (``<run>/eval-<hash>/step-<N>.json``);
:func:`consolidate` is the single writer of the HDF5 file: it reads every result, checks them,
and writes a temporary file that is renamed over ``scores.h5``, so a reader never sees a partial
file and a failed consolidation leaves the previous one untouched.

Schema (n = checkpoints incl. step 0, q = questions of the trait, s = samples per question)::

    /steps                                  int64   [n]         step 0 is the base model
    /loss/train                             float64 [n]         mean train loss since the previous checkpoint (NaN at 0)
    /loss/heldout                           float64 [n]         held-out in-domain loss
    /traits/<trait>/score                   float64 [n]         NaN-aware mean over questions and samples, default judge
    /traits/<trait>/samples                 float64 [n, q, s]   per-answer trait score, default judge (NaN = no score)
    /traits/<trait>/coherence               float64 [n, q, s]   per-answer coherence, default judge
    /traits/<trait>/responses               str     [n, q, s]   the generated answers (UTF-8)
    /traits/<trait>/question_ids            str     [q]
    /traits/<trait>/questions               str     [q]
    /traits/<trait>/judges/<judge>/score     float64 [n]
    /traits/<trait>/judges/<judge>/samples   float64 [n, q, s]
    /traits/<trait>/judges/<judge>/coherence float64 [n, q, s]
    /traits/<trait>/judges/<judge>/raw       str     [n, q, s]   the judge's raw reply where the score is NaN, else ""
    /traits/<trait>/judges/<judge>/reason    str     [n, q, s]   why the score is NaN, else ""
    /traits/<trait>/judges/<judge>/coherence_raw, coherence_reason   the same for the coherence score

With activation capture on (``activations.layers``), ``/activations`` and per-trait
``activations``/``persona`` groups are added (layout in :func:`emt.store.activations.write_h5`; read
them with :func:`emt.store.activations.read_h5`, since :func:`load` leaves these large arrays out).

Root attributes: ``config`` (resolved YAML), ``config_hash``, ``eval_hash``, ``run``,
``git_commit``, ``git_dirty``, ``model``, ``judge_models`` (JSON list; the first is the default),
``default_judge``, ``traits`` (JSON list), ``created``, ``emt_version``, ``packages`` (JSON),
``results_digest`` (SHA-256 of the result files consolidated, which staleness checks compare;
absent in files written before it), and with
activations captured ``persona_skipped`` (JSON {trait: why its persona vector was not built}; absent
when every vector was built, and in files written before it).
Judge names are used as HDF5 group names with ``/`` replaced by ``_``. HDF5 strings cannot hold
NUL characters; a NUL in generated text is stored as U+FFFD.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

import emt
from emt.core import atomic, paths
from emt.core.locks import locked
from emt.store import results as results_file
from emt.store.activations import write_h5
from emt.store.results import ConsolidationError

log = logging.getLogger(__name__)


def group_name(judge: str) -> str:
    return judge.replace("/", "_")


def _strings(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An object array of str for HDF5: None -> "", and NUL (which HDF5 strings cannot hold;
    a model can emit it) -> U+FFFD."""
    arr = np.array(values, dtype=object).reshape(shape)
    return np.vectorize(lambda v: "" if v is None else str(v).replace("\x00", "\ufffd"), otypes=[object])(arr)


def _mean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else math.nan


@contextlib.contextmanager
def sole_writer(out: Path) -> Iterator[None]:
    """Be the only process writing ``out``, and remove what dead writers left behind.

    Writers hold ``.<name>.lock`` (flock) for the whole write, so once it is held every
    ``.<name>.*.tmp.h5`` next to ``out`` belongs to a writer that died mid-write (kill -9, node
    failure; the OS released its lock), never to a live one: those are deleted. A second writer
    waits for the first, then writes the same content again (consolidation is idempotent).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(paths.scores_lock(out)):
        for stale in out.parent.glob(paths.scores_temp_glob(out)):
            log.info("removing %s, left by a consolidation that was killed mid-write", stale)
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        yield


def consolidate(
    results: Sequence[Path],
    out: Path,
    attrs: Mapping[str, Any],
    losses: Mapping[int, tuple[float | None, float | None]],
    activation_files: Sequence[Path] | None = None,
    persona_vectors: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``out`` (scores.h5) from per-checkpoint result files, atomically.

    ``losses`` maps step -> (train loss, held-out loss). ``activation_files`` (one per result, the
    same steps) and ``persona_vectors`` ({trait: emt.eval.persona.load(...)}) add the activation and
    persona groups (layout in :func:`emt.store.activations.write_h5`). Raises :class:`ConsolidationError`
    naming the offending file when a result is corrupt or does not match the others; ``out``
    is then left as it was.
    """
    import h5py  # heavy: only when writing

    loaded = [(results_file.read(p), p) for p in results]
    loaded.sort(key=lambda rp: int(rp[0]["step"]))
    if not loaded:
        raise ConsolidationError(f"no result files to consolidate for {out.parent}")
    shapes = _check_consistent(loaded)
    first, first_path = loaded[0]
    judges: list[str] = list(first["judges"])
    steps = np.array([int(d["step"]) for d, _ in loaded], dtype=np.int64)
    if len(set(steps.tolist())) != len(steps):
        raise ConsolidationError(f"duplicate steps among result files in {first_path.parent}")
    with sole_writer(out), atomic.atomic_path(out, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("steps", data=steps)
            h5.create_dataset("loss/train", data=np.array([_float(losses.get(int(s), (None, None))[0]) for s in steps]))
            h5.create_dataset("loss/heldout", data=np.array([_float(losses.get(int(s), (None, None))[1]) for s in steps]))
            for t, (q, s) in shapes.items():
                _write_trait(h5, t, [d["traits"][t] for d, _ in loaded], judges, q, s)
            if activation_files:
                if len(activation_files) != len(loaded):
                    raise ConsolidationError(f"{len(activation_files)} activation files for {len(loaded)} results")
                try:
                    write_h5(h5, list(activation_files), shapes, dict(persona_vectors or {}))
                except (OSError, ValueError, KeyError) as exc:
                    raise ConsolidationError(f"activations: {exc}") from None
            _write_attrs(h5, attrs, judges, list(shapes))
    return out


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _check_consistent(loaded: Sequence[tuple[dict[str, Any], Path]]) -> dict[str, tuple[int, int]]:
    """Each trait's (questions, samples), the same in every result (same judges, traits and
    questions as the first); ConsolidationError naming the file that differs."""
    first, first_path = loaded[0]
    judges: list[str] = list(first["judges"])
    traits: list[str] = list(first["traits"])
    shapes: dict[str, tuple[int, int]] = {}
    for t in traits:
        tr = first["traits"][t]
        shapes[t] = (len(tr["question_ids"]), len(tr["responses"][0]) if tr["responses"] else 0)
    for data, path in loaded:
        if list(data["judges"]) != judges or list(data["traits"]) != traits:
            raise ConsolidationError(f"{path}: judges/traits differ from {first_path}; these results come from "
                                     f"different eval configs: delete the stale file and rerun")
        for t in traits:
            tr = data["traits"][t]
            q, s = shapes[t]
            if tr["question_ids"] != first["traits"][t]["question_ids"]:
                raise ConsolidationError(f"{path}: questions of trait {t} differ from {first_path}")
            arrays = [tr["responses"]] + [tr["scores"][j] for j in judges] + [tr["coherence"][j] for j in judges]
            if any(len(a) != q or any(len(row) != s for row in a) for a in arrays):
                raise ConsolidationError(f"{path}: trait {t} does not have {q} questions x {s} samples")
    return shapes


def _write_trait(h5: Any, t: str, per_step: Sequence[Mapping[str, Any]], judges: Sequence[str], q: int, s: int) -> None:
    """``/traits/<t>``: questions, answers and every judge's group (the first judge's linked as the default)."""
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    n = len(per_step)
    g = h5.create_group(f"traits/{t}")
    g.create_dataset("question_ids", data=_strings(per_step[0]["question_ids"], (q,)), dtype=str_dt)
    g.create_dataset("questions", data=_strings(per_step[0]["questions"], (q,)), dtype=str_dt)
    resp = _strings([tr["responses"] for tr in per_step], (n, q, s))
    g.create_dataset("responses", data=resp, dtype=str_dt, compression="gzip")
    for j in judges:
        jg = g.create_group(f"judges/{group_name(j)}")
        jg.attrs["judge"] = j
        sc = np.array([[[_float(x) for x in row] for row in tr["scores"][j]] for tr in per_step],
                      dtype=np.float64).reshape(n, q, s)
        co = np.array([[[_float(x) for x in row] for row in tr["coherence"][j]] for tr in per_step],
                      dtype=np.float64).reshape(n, q, s)
        jg.create_dataset("samples", data=sc)
        jg.create_dataset("coherence", data=co)
        jg.create_dataset("score", data=np.array([_mean(x) for x in sc]))
        for key in ("raw", "reason", "coherence_raw", "coherence_reason"):  # absent in old results: ""
            vals = _strings([tr.get(key, {}).get(j) or [[""] * s] * q for tr in per_step], (n, q, s))
            jg.create_dataset(key, data=vals, dtype=str_dt, compression="gzip")
        if j == judges[0]:
            g["samples"] = h5py.SoftLink(f"/traits/{t}/judges/{group_name(j)}/samples")
            g["coherence"] = h5py.SoftLink(f"/traits/{t}/judges/{group_name(j)}/coherence")
            g["score"] = h5py.SoftLink(f"/traits/{t}/judges/{group_name(j)}/score")


def _write_attrs(h5: Any, attrs: Mapping[str, Any], judges: Sequence[str], traits: Sequence[str]) -> None:
    """The caller's attributes (JSON for anything but a scalar) and the file's own."""
    for k, v in attrs.items():
        h5.attrs[k] = v if isinstance(v, (str, int, float, bool, np.integer, np.floating)) else json.dumps(v)
    h5.attrs["judge_models"] = json.dumps(list(judges))
    h5.attrs["default_judge"] = judges[0]
    h5.attrs["traits"] = json.dumps(list(traits))
    h5.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    h5.attrs["emt_version"] = emt.__version__


def load(path: str | Path, strings: bool = True) -> dict[str, Any]:
    """Read a scores.h5 into numpy arrays (strings decoded) and its attributes.

    Returns ``{"steps", "loss": {"train", "heldout"}, "traits": {trait: {"score", "samples",
    "coherence", "responses", "question_ids", "questions", "judges": {judge: {...}}[, "persona":
    {"mean", "shift", "projection" (per answer [n, q, s, L]), "gap" (per layer, the persona vector's
    norm), "kept", "pairs", "layers"}]}}, "attrs", "activation_layers"}`` (``activation_layers`` empty
    when no activations were captured).

    ``strings=False`` reads the numbers only: the per-answer string arrays (``responses`` and each
    judge's ``raw``, ``reason``, ``coherence_raw``, ``coherence_reason``: by far the largest and
    slowest part of the file) are left out, the small ``question_ids``/``questions`` kept. For
    analyses that never look at the text.
    """
    import h5py

    big = ("responses", "raw", "reason", "coherence_raw", "coherence_reason")

    def read(ds: Any) -> np.ndarray:
        if h5py.check_string_dtype(ds.dtype) is not None:
            return ds.asstr()[()]
        return ds[()]

    with h5py.File(path, "r") as h5:
        out: dict[str, Any] = {
            "steps": h5["steps"][()],
            "loss": {k: h5["loss"][k][()] for k in h5["loss"]},
            "traits": {},
            "attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()},
        }
        for t, g in h5["traits"].items():
            keys = ("score", "samples", "coherence", "responses", "question_ids", "questions")
            tr: dict[str, Any] = {k: read(g[k]) for k in keys if strings or k not in big}
            tr["judges"] = {jg.attrs["judge"]: {k: read(jg[k]) for k in jg if strings or k not in big}
                            for jg in g["judges"].values()}
            if "persona" in g:  # the small persona signals only; activations.read_h5 has the rest
                pg = g["persona"]
                tr["persona"] = {k: pg[k][()] for k in ("mean", "shift", "projection") if k in pg}
                if "vector" in pg:  # per layer, the distance between the pos and neg personas' means
                    tr["persona"]["gap"] = np.linalg.norm(pg["vector"][()].astype(np.float64), axis=-1)
                tr["persona"].update({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in pg.attrs.items()})
            out["traits"][t] = tr
        out["activation_layers"] = h5["activations/layers"][()].tolist() if "activations" in h5 else []
    return out


def to_frame(path: str | Path) -> Any:
    """A tidy pandas DataFrame: one row per (step, trait, judge, question, sample)."""
    import pandas as pd

    d = load(path)
    rows = []
    steps = d["steps"]
    for t, tr in d["traits"].items():
        for j, jd in tr["judges"].items():
            n, q, s = jd["samples"].shape
            for i in range(n):
                for k in range(q):
                    for m in range(s):
                        rows.append({"step": int(steps[i]), "trait": t, "judge": j, "question_id": tr["question_ids"][k],
                                     "sample": m, "score": jd["samples"][i, k, m], "coherence": jd["coherence"][i, k, m],
                                     "response": tr["responses"][i, k, m]})
    return pd.DataFrame(rows)
