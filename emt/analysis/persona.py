"""Persona-vector math: a judge-free direction per trait and its projections (pure numpy).

The persona vector of each layer is mean(pos response activations) - mean(neg response
activations) over the (pos, neg) answer pairs the judge confirms; at every checkpoint the
projection of the response activations onto the unit vector (per answer and mean) and of their
shift from step 0 are a trait signal that needs no judge. Building the vectors on a model is
:mod:`emt.eval.persona`; writing the projections into scores.h5 is :mod:`emt.store.activations`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis.onset import DEFAULT_METHOD
from emt.analysis.uncertainty import bootstrap_onsets

TRAIT_MIN = 50.0  # pos answers must score at least this on the trait, neg answers below it
COHERENCE_MIN = 50.0  # both answers of a pair must be at least this coherent
ALARM_RISE = 10.0  # the judge's verdict on a checkpoint: its mean score >= step 0's + this many points


def confirmed_pairs(
    pos_trait: Any, neg_trait: Any, pos_coherence: Any, neg_coherence: Any,
    trait_min: float = TRAIT_MIN, coherence_min: float = COHERENCE_MIN,
) -> np.ndarray:
    """Boolean mask of (pos, neg) answer pairs the judge confirms; a NaN score never confirms."""
    pt, nt = np.asarray(pos_trait, dtype=np.float64), np.asarray(neg_trait, dtype=np.float64)
    pc, nc = np.asarray(pos_coherence, dtype=np.float64), np.asarray(neg_coherence, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (pt >= trait_min) & (nt < trait_min) & (pc >= coherence_min) & (nc >= coherence_min)


def persona_vector(pos_acts: Any, neg_acts: Any, keep: Any | None = None) -> np.ndarray:
    """mean(pos) - mean(neg) over the kept pairs, per layer: [n, L, H] x 2 -> [L, H].

    Rows with NaN (an empty answer) are dropped from their side. ValueError when no pair is kept:
    a vector from nothing would silently be zeros.
    """
    p, n_ = np.asarray(pos_acts, dtype=np.float64), np.asarray(neg_acts, dtype=np.float64)
    if p.shape != n_.shape or p.ndim != 3:
        raise ValueError(f"pos and neg activations must both be [pairs, layers, hidden]; got {p.shape} and {n_.shape}")
    k = np.ones(p.shape[0], dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    k = k & np.isfinite(p).all(axis=(1, 2)) & np.isfinite(n_).all(axis=(1, 2))
    if not k.any():
        raise ValueError("no confirmed (pos, neg) pair: the judge confirmed none of the base model's answers under "
                         "the trait's system prompts; check the judge, or add instruction pairs / samples")
    return p[k].mean(axis=0) - n_[k].mean(axis=0)


def unit(vec: Any) -> np.ndarray:
    """Each layer's vector scaled to unit length ([L, H]); a zero vector stays zero."""
    v = np.asarray(vec, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def project(acts: Any, vec: Any) -> np.ndarray:
    """Projection of activations [..., L, H] onto the unit persona vector [L, H] -> [..., L]."""
    a = np.asarray(acts, dtype=np.float64)
    return np.einsum("...lh,lh->...l", a, unit(vec))


def projections(response_acts: Any, vec: Any, base_response_acts: Any | None = None) -> dict[str, np.ndarray]:
    """Per-checkpoint persona signal from response activations [answers, L, H].

    Returns ``per_answer`` [answers, L], ``mean`` [L] (NaN-aware) and, with the step-0 activations
    of the same answers' questions, ``shift`` [L]: the projection of mean(checkpoint) - mean(step 0).
    """
    pa = project(response_acts, vec)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(pa, axis=0) if pa.size else np.full(np.shape(vec)[0], np.nan)
    out = {"per_answer": pa, "mean": mean}
    if base_response_acts is not None:
        a = np.asarray(response_acts, dtype=np.float64)
        b = np.asarray(base_response_acts, dtype=np.float64)
        shift = np.nanmean(a, axis=0) - np.nanmean(b, axis=0)
        out["shift"] = project(shift[None], vec)[0]
    return out


# --------------------------------------------------------------------------------------------
# The persona projection as an alarm: its onset against the judge's, and its AUROC
# --------------------------------------------------------------------------------------------


def gap_percent(projection: Any, gap: Any) -> np.ndarray:
    """Projections [..., L] in percent of each layer's persona gap (the vector's norm: the
    distance between the pos and neg personas' mean activations), so that detectors built for
    0-100 scores (their noise floor is in points) read them on a scale with a meaning: 100 = a
    move as far as from the neg persona to the pos persona. A zero gap gives NaN."""
    g = np.asarray(gap, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.asarray(projection, dtype=np.float64) / np.where(g > 0, g, np.nan)


def persona_lead(
    steps: Any, samples: Any, persona: Mapping[str, Any], method: str = DEFAULT_METHOD, n_boot: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> dict[int, dict[str, Any]]:
    """Per captured layer: the onset of the persona projection (per answer, in percent of the gap),
    the judge's onset on the same answers, and the lead (judge onset - projection onset, in
    checkpoints; positive = the projection rose first), each with a percentile interval from one
    paired bootstrap (the same questions drawn for both, as both measure the same answers).

    Args:
        steps: [n] steps. samples: the judge's per-answer scores [n, q, s].
        persona: a trait's ``persona`` group from :func:`emt.store.scores.load` (``projection``
            [n, q, s, L], ``gap`` [L], ``layers``).

    Returns ``{layer: {"persona_onset", "persona_lo", "persona_hi", "judge_onset", "judge_lo",
    "judge_hi", "lead", "lead_lo", "lead_hi", "p_persona_first"}}`` (onsets in steps; None where
    none); empty without per-answer projections.
    """
    proj = persona.get("projection")
    if proj is None or "gap" not in persona:
        return {}
    proj = gap_percent(proj, persona["gap"])
    layers = list(persona.get("layers", range(proj.shape[-1])))
    out: dict[int, dict[str, Any]] = {}
    for i in range(proj.shape[-1]):
        c = bootstrap_onsets(steps, proj[..., i], samples, n_boot=n_boot, seed=seed, level=level, method=method,
                             paired=True)
        out[int(layers[i]) if i < len(layers) else i] = {
            "persona_onset": c.onset_early.estimate, "persona_lo": c.onset_early.lo, "persona_hi": c.onset_early.hi,
            "judge_onset": c.onset_late.estimate, "judge_lo": c.onset_late.lo, "judge_hi": c.onset_late.hi,
            "lead": c.lead.estimate, "lead_lo": c.lead.lo, "lead_hi": c.lead.hi, "p_persona_first": c.p_early_first}
    return out


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (Mann-Whitney; ties count
    half; non-finite scores dropped). NaN when either class is empty."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    pos, neg = s[y], s[~y]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(allv.size)
    # average ranks over ties (rank-sum form of Mann-Whitney: O(n log n), no n_pos x n_neg matrix)
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def alarm_points(steps: Any, score: Any, persona: Mapping[str, Any], rise: float = ALARM_RISE) -> dict[str, Any]:
    """One run's checkpoints as alarm cases (step 0, the reference, left out): ``alarm`` [n-1, L]
    (the shift of the mean projection from step 0, in percent of the gap) and ``verdict`` [n-1]
    (the judge's mean score at least ``rise`` points above step 0's). Empty arrays without
    persona signals."""
    st = np.asarray(steps)
    y = np.asarray(score, dtype=np.float64)
    shift = persona.get("shift")
    if shift is None or "gap" not in persona or st.size < 2:
        return {"alarm": np.zeros((0, 0)), "verdict": np.zeros(0, dtype=bool)}
    a = gap_percent(shift, persona["gap"])
    with np.errstate(invalid="ignore"):
        verdict = (y - y[0]) >= rise
    keep = (st != st[0]) & np.isfinite(y)
    return {"alarm": a[keep], "verdict": verdict[keep]}


def alarm_auroc(
    runs: Sequence[Mapping[str, Any]], trait: str, rise: float = ALARM_RISE, n_boot: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[int, dict[str, Any]]:
    """AUROC of the persona-projection alarm against the judge's verdict per checkpoint, pooled
    over ``runs`` (:func:`emt.store.scores.load` dicts; runs without the trait's persona signals
    are skipped), per layer, with a percentile interval: whole runs resampled when there are at
    least 3 (checkpoints of a run are not independent), else checkpoints.

    Returns ``{layer: {"auroc", "lo", "hi", "positives", "checkpoints", "runs", "resampled"}}``.
    """
    cases = []
    layers: list[int] = []
    for d in runs:
        tr = d.get("traits", {}).get(trait)
        if not tr or not tr.get("persona"):
            continue
        pts = alarm_points(d["steps"], tr["score"], tr["persona"], rise)
        if pts["alarm"].size:
            cases.append(pts)
            layers = layers or [int(x) for x in tr["persona"].get("layers", range(pts["alarm"].shape[1]))]
    if not cases:
        return {}
    rng = np.random.default_rng(seed)
    by_run = len(cases) >= 3
    a = (1.0 - level) / 2.0
    out: dict[int, dict[str, Any]] = {}
    for i, layer in enumerate(layers):
        xs = [c["alarm"][:, i] for c in cases]
        ys = [c["verdict"] for c in cases]
        x, y = np.concatenate(xs), np.concatenate(ys)
        reps = []
        for _ in range(n_boot):
            if by_run:
                pick = rng.integers(0, len(cases), len(cases))
                bx, by = np.concatenate([xs[j] for j in pick]), np.concatenate([ys[j] for j in pick])
            else:
                pick = rng.integers(0, x.size, x.size)
                bx, by = x[pick], y[pick]
            reps.append(auroc(bx, by))
        r = np.asarray(reps)
        r = r[np.isfinite(r)]
        lo, hi = (float(v) for v in np.quantile(r, [a, 1 - a])) if r.size else (None, None)
        out[layer] = {"auroc": auroc(x, y), "lo": lo, "hi": hi, "positives": int(y.sum()), "checkpoints": int(y.size),
                      "runs": len(cases), "resampled": "runs" if by_run else "checkpoints"}
    return out
