"""Run-level summaries from ``emt.store.scores.load`` output, the headline table, and a tidy CSV table."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis._util import spacing
from emt.analysis.metrics import nanmean_rows, auc, coherence_drop, peak
from emt.analysis.onset import DEFAULT_METHOD, detect
from emt.analysis.uncertainty import bootstrap, bootstrap_onsets, checkpoint_se

EARLY, LATE = "hallucination", "evil"


def parse_run_name(name: str) -> dict[str, Any]:
    """``<domain>_<level>[_<variant>][_s<seed>]`` (see ``emt.sweep.runs.build_sweep``) -> domain, level,
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


def run_identity(scores: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Domain, level, variant (None for none) and seed of the run ``name`` whose scores these are.

    From scores.h5's identity attributes, written at consolidation from the run itself
    (``domain``, ``level``, ``variant``, ``seed``); files written before them (or scores that
    describe another run than ``name``) fall back to :func:`parse_run_name`.
    """
    attrs = scores.get("attrs", {}) or {}
    if "domain" not in attrs or "level" not in attrs or str(attrs.get("run", "") or "") != name:
        return parse_run_name(name)
    seed = attrs.get("seed")
    return {"domain": str(attrs["domain"]), "level": str(attrs["level"]), "variant": str(attrs.get("variant") or "") or None,
            "seed": None if seed is None else int(seed)}


def _coherence_series(tr: Mapping[str, Any]) -> np.ndarray | None:
    coh = tr.get("coherence")
    if coh is None:
        return None
    c = np.asarray(coh, dtype=np.float64)
    return nanmean_rows(c.reshape(c.shape[0], -1)) if c.ndim > 1 else c


def run_summary(
    scores: Mapping[str, Any], method: str = DEFAULT_METHOD, early: str = EARLY, late: str = LATE,
    run: str | None = None, n_boot: int = 0, seed: int = 0, **params: Any,
) -> dict[str, Any]:
    """Per-trait onset, peak, AUC and coherence drop of one run, and the early -> late lead time.

    Args:
        scores: the dict from :func:`emt.store.scores.load` (``steps``, ``traits/<t>/score`` and
            ``coherence``; ``attrs["run"]`` names the run).
        method, **params: the onset method and its parameters (default ``foot``).
        early, late: traits for the lead time (default hallucination -> evil); the lead time is
            None when either trait is absent.
        run: the run name, overriding ``attrs["run"]``.
        n_boot: bootstrap replicates for the intervals (0, the default: none). With n_boot > 0 each
            trait's onset gets a percentile interval (``onset_lo``/``onset_hi``; questions
            resampled), and the lead time its interval (``lo``/``hi``, checkpoints) and
            ``p_early_first`` from the same replicates (:func:`emt.analysis.uncertainty.bootstrap_onsets`).
        seed: the bootstrap's seed.

    With ``method="glr"`` each trait's noise is its per-checkpoint standard error from the answers
    (:func:`emt.analysis.uncertainty.checkpoint_se`) when ``samples`` are present.

    Returns:
        ``{"run", "domain", "level", "seed", "method", "n_checkpoints", "traits": {t: {"onset_step",
        "effect", "onset_lo", "onset_hi", "peak_value", "peak_step", "auc", "coherence_drop"}},
        "lead_time": {"onset_early", "onset_late", "steps", "checkpoints", "spacing"[, "lo", "hi",
        "p_early_first"]} | None, "bootstrap": OnsetComparison | None}``.
        ``coherence_drop`` is per trait prompt set (each trait has its own questions), in percent
        from step 0 to the last checkpoint.
    """
    steps = np.asarray(scores["steps"])
    name = run if run is not None else str(scores.get("attrs", {}).get("run", "") or "")
    out: dict[str, Any] = {"run": name or None, **run_identity(scores, name), "method": method,
                           "n_checkpoints": int(steps.size), "traits": {}, "lead_time": None, "bootstrap": None}
    traits = scores.get("traits", {})
    per_trait: dict[str, dict[str, Any]] = {}
    for t, tr in traits.items():
        y = np.asarray(tr["score"], dtype=np.float64)
        pv, ps = peak(steps, y)
        coh = _coherence_series(tr)
        p = _trait_params(tr, method, params)
        per_trait[t] = p
        r = detect(steps, y, method=method, **p)
        out["traits"][t] = {
            "onset_step": r.step, "effect": r.effect, "onset_lo": None, "onset_hi": None,
            "peak_value": pv, "peak_step": ps, "auc": auc(steps, y),
            "coherence_drop": None if coh is None else coherence_drop(coh),
        }
    if early in traits and late in traits:
        oe, ol = out["traits"][early]["onset_step"], out["traits"][late]["onset_step"]
        sp = spacing(steps)
        d = None if oe is None or ol is None else int(ol - oe)
        out["lead_time"] = {"method": method, "onset_early": oe, "onset_late": ol, "steps": d,
                            "checkpoints": None if d is None else d / sp, "spacing": sp}
    if n_boot > 0:
        for t, tr in traits.items():  # every trait's onset interval; the pair's from one joint bootstrap
            if tr.get("samples") is None or t in (early, late) and early in traits and late in traits:
                continue
            b = bootstrap(steps, tr["samples"], "onset", n_boot=n_boot, seed=seed, method=method, **per_trait[t])
            out["traits"][t].update(onset_lo=b.lo, onset_hi=b.hi, onset_frac_none=b.frac_none)
        if out["lead_time"] is not None and traits[early].get("samples") is not None \
                and traits[late].get("samples") is not None:
            c = bootstrap_onsets(steps, traits[early]["samples"], traits[late]["samples"], n_boot=n_boot, seed=seed,
                                 method=method, **params)
            for t, r in ((early, c.onset_early), (late, c.onset_late)):
                out["traits"][t].update(onset_lo=r.lo, onset_hi=r.hi, onset_frac_none=r.frac_none)
            out["bootstrap"] = c
            out["lead_time"].update(lo=c.lead.lo, hi=c.lead.hi, p_early_first=c.p_early_first,
                                    frac_none=c.lead.frac_none)
    return out


def _trait_params(tr: Mapping[str, Any], method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The onset parameters for one trait: glr gets the per-checkpoint standard error from the
    trait's answers (its noise from the data) unless the caller gave one."""
    p = dict(params)
    if method == "glr" and "se" not in p and tr.get("samples") is not None:
        x = np.asarray(tr["samples"], dtype=np.float64)
        if x.ndim == 3:
            p["se"] = checkpoint_se(x)
    return p


def headline_table(summaries: Sequence[Mapping[str, Any]], traits: Sequence[str] | None = None) -> Any:
    """The study's table: one row per run from :func:`run_summary` results.

    Columns: ``run, domain, level, onset_<trait>`` (step) with ``onset_<trait>_lo/_hi`` (its
    bootstrap interval, NaN when not computed) and ``effect_<trait>`` (the rise in points), and
    ``peak_<trait>`` (value) for every trait (default: all traits seen, sorted),
    ``lead_checkpoints`` (early -> late; positive = the early trait first) with ``lead_lo/_hi``
    and ``p_early_first`` (the bootstrap share of replicates where the early trait's onset comes first), ``coherence_drop_<trait>`` (percent) and ``coherence_drop`` (their mean).
    Missing values are NaN/None. Returns a pandas DataFrame.
    """
    import pandas as pd

    traits = list(traits) if traits is not None else sorted({t for s in summaries for t in s["traits"]})
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"run": s.get("run"), "domain": s.get("domain"), "level": s.get("level")}
        for t in traits:
            tt = s["traits"].get(t, {})
            row[f"onset_{t}"] = tt.get("onset_step")
            row[f"onset_{t}_lo"], row[f"onset_{t}_hi"] = tt.get("onset_lo"), tt.get("onset_hi")
            row[f"effect_{t}"] = tt.get("effect")
        for t in traits:
            row[f"peak_{t}"] = s["traits"].get(t, {}).get("peak_value")
        lt = s.get("lead_time")
        row["lead_checkpoints"] = None if not lt else lt["checkpoints"]
        row["lead_lo"], row["lead_hi"] = (None, None) if not lt else (lt.get("lo"), lt.get("hi"))
        row["p_early_first"] = None if not lt else lt.get("p_early_first")
        drops = []
        for t in traits:
            d = s["traits"].get(t, {}).get("coherence_drop")
            row[f"coherence_drop_{t}"] = d
            if d is not None:
                drops.append(d)
        row["coherence_drop"] = float(np.mean(drops)) if drops else None
        rows.append(row)
    cols = (["run", "domain", "level"]
            + [c for t in traits for c in (f"onset_{t}", f"onset_{t}_lo", f"onset_{t}_hi", f"effect_{t}")]
            + [f"peak_{t}" for t in traits] + ["lead_checkpoints", "lead_lo", "lead_hi", "p_early_first"]
            + [f"coherence_drop_{t}" for t in traits] + ["coherence_drop"])
    df = pd.DataFrame(rows, columns=cols)
    # onset steps are integers with gaps (None); the nullable Int64 keeps them integral in CSV
    for t in traits:
        df[f"onset_{t}"] = df[f"onset_{t}"].astype("Int64")
        for c in (f"onset_{t}_lo", f"onset_{t}_hi", f"effect_{t}"):
            df[c] = df[c].astype("float64")
    for c in ("lead_lo", "lead_hi", "p_early_first"):
        df[c] = df[c].astype("float64")
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
