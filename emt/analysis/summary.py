"""Run-level summaries from ``emt.store.load`` output, the headline table, and a tidy CSV table."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis.metrics import _nanmean_rows, auc, coherence_drop, lead_time, peak
from emt.analysis.onset import DEFAULT_METHOD, onset

EARLY, LATE = "hallucination", "evil"


def parse_run_name(name: str) -> dict[str, Any]:
    """``<domain>_<level>[_<variant>][_s<seed>]`` (see ``emt.sweeps.build_sweep``) -> domain, level,
    variant (a schedule-sweep run's ``cosine-lr1e-05-adamw-torch``) and seed (None if absent).

    Domain, level and variant names contain no underscore (the config validates domain and
    level; variants are built without one), so the split is unambiguous; an unparseable name
    gives None everywhere.
    """
    m = re.fullmatch(r"([^_]+)_([^_]+)(?:_(?!s\d+$)([^_]+))?(?:_s(\d+))?", name or "")
    if not m:
        return {"domain": None, "level": None, "variant": None, "seed": None}
    return {"domain": m.group(1), "level": m.group(2), "variant": m.group(3),
            "seed": None if m.group(4) is None else int(m.group(4))}


def _coherence_series(tr: Mapping[str, Any]) -> np.ndarray | None:
    coh = tr.get("coherence")
    if coh is None:
        return None
    c = np.asarray(coh, dtype=np.float64)
    return _nanmean_rows(c.reshape(c.shape[0], -1)) if c.ndim > 1 else c


def run_summary(
    scores: Mapping[str, Any], method: str = DEFAULT_METHOD, early: str = EARLY, late: str = LATE,
    run: str | None = None, **params: Any,
) -> dict[str, Any]:
    """Per-trait onset, peak, AUC and coherence drop of one run, and the early -> late lead time.

    Args:
        scores: the dict from :func:`emt.store.load` (``steps``, ``traits/<t>/score`` and
            ``coherence``; ``attrs["run"]`` names the run).
        method, **params: the onset method and its parameters (default ``foot``).
        early, late: traits for the lead time (default hallucination -> evil); the lead time is
            None when either trait is absent.
        run: the run name, overriding ``attrs["run"]``.

    Returns:
        ``{"run", "domain", "level", "seed", "method", "n_checkpoints", "traits": {t: {"onset_step",
        "peak_value", "peak_step", "auc", "coherence_drop"}}, "lead_time": lead_time dict | None}``.
        ``coherence_drop`` is per trait prompt set (each trait has its own questions), in percent
        from step 0 to the last checkpoint.
    """
    steps = np.asarray(scores["steps"])
    name = run if run is not None else str(scores.get("attrs", {}).get("run", "") or "")
    out: dict[str, Any] = {"run": name or None, **parse_run_name(name), "method": method,
                           "n_checkpoints": int(steps.size), "traits": {}, "lead_time": None}
    traits = scores.get("traits", {})
    for t, tr in traits.items():
        y = np.asarray(tr["score"], dtype=np.float64)
        pv, ps = peak(steps, y)
        coh = _coherence_series(tr)
        out["traits"][t] = {
            "onset_step": onset(steps, y, method=method, **params),
            "peak_value": pv, "peak_step": ps, "auc": auc(steps, y),
            "coherence_drop": None if coh is None else coherence_drop(coh),
        }
    if early in traits and late in traits:
        out["lead_time"] = lead_time(steps, traits[early]["score"], traits[late]["score"], method=method, **params)
    return out


def headline_table(summaries: Sequence[Mapping[str, Any]], traits: Sequence[str] | None = None) -> Any:
    """The study's table: one row per run from :func:`run_summary` results.

    Columns: ``run, domain, level, onset_<trait>`` (step) and ``peak_<trait>`` (value) for every
    trait (default: all traits seen, sorted), ``lead_checkpoints`` (early -> late; positive = the
    early trait first), ``coherence_drop_<trait>`` (percent) and ``coherence_drop`` (their mean).
    Missing values are NaN/None. Returns a pandas DataFrame.
    """
    import pandas as pd

    traits = list(traits) if traits is not None else sorted({t for s in summaries for t in s["traits"]})
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"run": s.get("run"), "domain": s.get("domain"), "level": s.get("level")}
        for t in traits:
            row[f"onset_{t}"] = s["traits"].get(t, {}).get("onset_step")
        for t in traits:
            row[f"peak_{t}"] = s["traits"].get(t, {}).get("peak_value")
        lt = s.get("lead_time")
        row["lead_checkpoints"] = None if not lt else lt["checkpoints"]
        drops = []
        for t in traits:
            d = s["traits"].get(t, {}).get("coherence_drop")
            row[f"coherence_drop_{t}"] = d
            if d is not None:
                drops.append(d)
        row["coherence_drop"] = float(np.mean(drops)) if drops else None
        rows.append(row)
    cols = (["run", "domain", "level"] + [f"onset_{t}" for t in traits] + [f"peak_{t}" for t in traits]
            + ["lead_checkpoints"] + [f"coherence_drop_{t}" for t in traits] + ["coherence_drop"])
    df = pd.DataFrame(rows, columns=cols)
    # onset steps are integers with gaps (None); the nullable Int64 keeps them integral in CSV
    for t in traits:
        df[f"onset_{t}"] = df[f"onset_{t}"].astype("Int64")
    return df


def tidy_table(scores: Mapping[str, Any]) -> Any:
    """One row per (step, trait): ``step, trait, score, coherence, train_loss, heldout_loss``.

    ``coherence`` is the NaN-aware mean over the trait's answers; losses come from
    ``scores["loss"]`` (NaN when absent). For CSV export. Returns a pandas DataFrame.
    """
    import pandas as pd

    steps = np.asarray(scores["steps"])
    n = steps.size
    loss = scores.get("loss", {}) or {}
    train = np.asarray(loss.get("train", np.full(n, np.nan)), dtype=np.float64)
    held = np.asarray(loss.get("heldout", np.full(n, np.nan)), dtype=np.float64)
    frames = []
    for t, tr in scores.get("traits", {}).items():
        coh = _coherence_series(tr)
        frames.append(pd.DataFrame({
            "step": steps.astype(np.int64), "trait": t, "score": np.asarray(tr["score"], dtype=np.float64),
            "coherence": coh if coh is not None else np.full(n, np.nan), "train_loss": train, "heldout_loss": held,
        }))
    if not frames:
        return pd.DataFrame(columns=["step", "trait", "score", "coherence", "train_loss", "heldout_loss"])
    return pd.concat(frames, ignore_index=True).sort_values(["step", "trait"], kind="stable").reset_index(drop=True)
