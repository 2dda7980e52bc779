"""Per-trajectory metrics (peak, AUC, coherence drop) and lead times between two traits."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis._util import as_series, finite, spacing
from emt.analysis.onset import DEFAULT_METHOD, METHODS, onset


def peak(steps: Any, scores: Any, window: int = 1) -> tuple[float, int] | tuple[None, None]:
    """(peak value, its step): the NaN-aware maximum of ``scores``; (None, None) if all NaN.

    ``window`` (default 1 = raw scores) takes the peak of a centred moving average over that many
    finite points instead: the raw maximum of a noisy series is biased upwards by about 2-3 sigma.
    Ties go to the earliest step.
    """
    s, y = as_series(steps, scores)
    _, fs, fy = finite(s, y)
    if fy.size == 0:
        return None, None
    if window > 1:
        w = min(int(window), fy.size)
        kern = np.ones(w)
        # divide by the number of points actually in the window so the ends are not pulled to 0
        fy = np.convolve(fy, kern, mode="same") / np.convolve(np.ones(fy.size), kern, mode="same")
    i = int(np.argmax(fy))
    return float(fy[i]), int(fs[i])


def time_to_peak(
    steps: Any, scores: Any, method: str = DEFAULT_METHOD, from_onset: bool = True, **params: Any
) -> int | None:
    """Steps from the onset (``from_onset=True``, default; None without onset) or from the first
    step (``from_onset=False``) to the peak; ``method``/``params`` go to :func:`onset`."""
    _, pstep = peak(steps, scores)
    if pstep is None:
        return None
    if not from_onset:
        return int(pstep - int(np.asarray(steps)[0]))
    o = onset(steps, scores, method=method, **params)
    return None if o is None else int(pstep - o)


def auc(steps: Any, scores: Any, baseline: float | None = None) -> float | None:
    """Trapezoid area under the finite points, divided by the step range they span.

    The result is the time-averaged score (0-100 scale), comparable across runs of different
    lengths. ``baseline`` (default None) is subtracted first (e.g. the step-0 score, giving the
    average excess). None with fewer than 2 finite points.
    """
    s, y = as_series(steps, scores)
    _, fs, fy = finite(s, y)
    if fy.size < 2:
        return None
    if baseline is not None:
        fy = fy - baseline
    t = fs.astype(np.float64)
    area = float(np.sum((fy[1:] + fy[:-1]) * np.diff(t)) / 2.0)
    return area / float(t[-1] - t[0])


def coherence_drop(coh_scores: Any, to: str = "last") -> float | None:
    """Percent drop of coherence from the first checkpoint (step 0) to the last (``to="last"``,
    default) or to the minimum (``to="min"``): 100 * (c0 - c_end) / c0; positive = a drop.

    ``coh_scores`` is per checkpoint [n] or per answer [n, q, s] (NaN-aware mean over answers).
    The first and last are the first and last finite checkpoints. None when undefined
    (fewer than 2 finite checkpoints or c0 == 0).
    """
    c = np.asarray(coh_scores, dtype=np.float64)
    if c.ndim > 1:
        c = nanmean_rows(c.reshape(c.shape[0], -1))
    c = c[np.isfinite(c)]
    if c.size < 2 or c[0] == 0:
        return None
    if to not in ("last", "min"):
        raise ValueError(f"coherence_drop: to must be 'last' or 'min', got {to!r}")
    end = c[-1] if to == "last" else float(c[1:].min())
    return float(100.0 * (c[0] - end) / c[0])


def nanmean_rows(a: np.ndarray) -> np.ndarray:
    """NaN-aware mean of each row; NaN (no warning) for an all-NaN row."""
    m = np.isfinite(a)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, a, 0.0).sum(axis=1) / cnt


def lead_time(
    steps: Any, early: Any, late: Any, method: str = DEFAULT_METHOD, **params: Any
) -> dict[str, Any]:
    """How long ``early`` (e.g. hallucination) emerges before ``late`` (e.g. evil).

    Returns ``{"method", "onset_early", "onset_late", "steps", "checkpoints", "spacing"}`` where
    ``steps`` = onset(late) - onset(early) (positive = early leads) and ``checkpoints`` = steps /
    checkpoint spacing (the median step difference of ``steps``); both None when either onset is
    None. ``method``/``params`` go to :func:`onset` for both traits.
    """
    oe = onset(steps, early, method=method, **params)
    ol = onset(steps, late, method=method, **params)
    sp = spacing(steps)
    d = None if oe is None or ol is None else int(ol - oe)
    return {"method": method, "onset_early": oe, "onset_late": ol, "steps": d,
            "checkpoints": None if d is None else d / sp, "spacing": sp}


def lead_times_all_methods(
    steps: Any, early: Any, late: Any, methods: Sequence[str] = METHODS,
    params: Mapping[str, Mapping[str, Any]] | None = None, tol: float = 2.0,
) -> dict[str, Any]:
    """:func:`lead_time` under every method, plus how well they agree.

    ``params`` maps a method name to its parameters. Returns ``{"methods": {method: lead_time
    dict}, "agreement": {"n_methods", "n_valid", "median", "n_agree", "agree", "spread",
    "min", "max"}}`` where, over the methods with a lead time (in checkpoints), ``median`` is
    their median, ``n_agree`` how many lie within +-``tol`` checkpoints (default 2) of it,
    ``agree`` the names of those, and ``spread`` = max - min (None if no method has a lead time).
    """
    params = params or {}
    per = {m: lead_time(steps, early, late, method=m, **dict(params.get(m, {}))) for m in methods}
    vals = {m: r["checkpoints"] for m, r in per.items() if r["checkpoints"] is not None}
    if vals:
        v = np.array(list(vals.values()), dtype=np.float64)
        med = float(np.median(v))
        agree = [m for m, x in vals.items() if abs(x - med) <= tol]
        summ = {"n_methods": len(per), "n_valid": len(vals), "median": med, "n_agree": len(agree),
                "agree": agree, "spread": float(v.max() - v.min()), "min": float(v.min()), "max": float(v.max())}
    else:
        summ = {"n_methods": len(per), "n_valid": 0, "median": None, "n_agree": 0, "agree": [],
                "spread": None, "min": None, "max": None}
    return {"methods": per, "agreement": summ}
