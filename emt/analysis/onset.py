"""Onset detection: the step at which a trait score emerges from its baseline.

All methods skip NaN scores (a checkpoint with no score is dropped, never read as 0) and return a
STEP (a value of ``steps``), or None when the trait never emerges. Scores are on the 0-100 scale.

Methods (``METHODS``):

``glr`` (default)
    noise-aware: a persistent rise is a likelihood-ratio change point (the standardised mean
    difference after vs before, maximised over splits) significant at a false-positive rate
    ``alpha`` (0.5%) per never-emerging series, its threshold simulated for the series length
    through the same pipeline (:func:`glr_threshold`). Noise: per-checkpoint standard errors
    from the answers when given (``se``), raised to the series' own local noise (trimmed sd of
    first differences per block of 32) where larger. Isolated single-checkpoint spikes (> 3.5
    sigma from the median of the point and its neighbours) are replaced by that median; NaN are
    skipped; the earliest significant change is kept; the onset is placed at the foot of the
    rise by ``foot``'s hinge fit. :func:`detect` reports the effect size in points (mean after the
    onset minus before) with the statistic and threshold; ``min_effect`` is an optional floor.
    On the grid of bench/onset_grid.py (sigma 1-8 points, rises 2-10 sigma, steps and ramps of
    1-10 checkpoints, baselines 0-40, two 4-7 sigma spikes, 1-3% NaN, 100-300 checkpoints):
    >= 96.9% of rises >= 4 sigma found within 2 checkpoints (+ half the ramp) at every sigma,
    <= 1.7% false positives at every sigma, mean error 1.2 checkpoints.
``foot``
    detected exactly like ``threshold`` (below: same misses, same false positives), then located
    at the foot of the rise by a least-squares hinge fit (flat level, linear rise, plateau) over
    the ``window`` (20) checkpoints before the margin crossing; a ramp must beat a step by
    ``penalty`` (5) sigma^2. On a step it equals ``threshold``; on a ramp it finds where the rise
    starts rather than where it clears the margin. At sigma = 5 points on a 40-point rise: within
    +-1 checkpoint of the change on 99.5% of steps, 96% of 5-checkpoint ramps, 99% with 10% of
    scores missing, 96.5% with the change hidden in a 3-checkpoint NaN gap; 0% false positives
    on flat runs (``tests.fakes.synthetic.error_table``, 200 seeds).
``threshold``
    baseline = mean of the first ``baseline_points`` finite scores (default 10); onset = the first
    checkpoint above baseline + ``margin`` (default 10) that stays above for ``k`` consecutive
    finite checkpoints (default 5, itself included). Measures the *crossing* of the margin, so on a
    gradual ramp it sits ``margin / slope`` checkpoints after the foot of the ramp.
``cusum``
    one-sided CUSUM of the baseline-standardised series; onset = the start of the excursion that
    raised the alarm.
``pelt`` / ``binseg``
    ``ruptures`` change points (model ``l2`` or ``rbf``); onset = the first change point whose
    following segment mean exceeds the mean before it by >= ``margin``.
``piecewise``
    least-squares fit of flat -> linear ramp (-> flat plateau, default) against flat only; onset =
    the first checkpoint on the ramp when the rise is >= ``margin`` and the BIC prefers the ramp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from emt.analysis._util import as_series, check_params, finite, quiet_runtime_warnings, robust_sigma, spacing
from emt.core.config import ONSET_METHODS

# The names live in core so that config validation can check monitor.method without importing this module.
METHODS: tuple[str, ...] = ONSET_METHODS
DEFAULT_METHOD = "glr"

# Defaults shared by every method that has the parameter: a trait "emerges" when it rises by at
# least MARGIN points on the 0-100 scale above a baseline estimated from BASELINE_POINTS points.
MARGIN = 10.0
BASELINE_POINTS = 10
K = 5


def onset(steps: Any, scores: Any, method: str = DEFAULT_METHOD, **params: Any) -> int | None:
    """The step at which ``scores`` emerges from its baseline, or None if it never does.

    Args:
        steps: 1-D increasing training steps, one per checkpoint (step 0 = the base model).
        scores: 1-D trait scores (0-100), NaN = missing; NaN points are skipped.
        method: one of :data:`METHODS`; default ``"glr"``.
        **params: method parameters (see :func:`onset_threshold`, :func:`onset_cusum`,
            :func:`onset_ruptures`, :func:`onset_piecewise`). Unknown names raise ValueError.

    Returns:
        The onset step (an element of ``steps``) or None.
    """
    try:
        fn = _DISPATCH[method]
    except KeyError:
        raise ValueError(f"unknown onset method {method!r}; choose one of {METHODS}") from None
    return fn(steps, scores, method=method, **params)


@dataclass(frozen=True)
class OnsetResult:
    """An onset with its evidence: ``step`` (None = never emerged), ``effect`` (the rise in points:
    mean score from the onset on minus the mean before it, NaN-aware; None without onset), the
    method and its parameters, and for ``glr`` the statistic ``z``, its ``threshold`` and the
    noise ``sigma`` (median, points) it used."""

    step: int | None
    effect: float | None
    method: str
    params: dict[str, Any]
    z: float | None = None
    threshold: float | None = None
    sigma: float | None = None


def detect(steps: Any, scores: Any, method: str = DEFAULT_METHOD, **params: Any) -> OnsetResult:
    """:func:`onset` with its effect size (points) and, for ``glr``, the test's statistic and threshold."""
    s, y = as_series(steps, scores)
    if method == "glr" and y.size:
        check_params(method, params, set(GLR_PARAMS))
        p = {k: v for k, v in params.items() if k != "se"}
        se = params.get("se")
        r = glr_detect_index(y[None, :], None if se is None else np.asarray(se, dtype=np.float64),
                             t=s.astype(np.float64) / spacing(s), **p)
        i = int(r["index"][0])
        z, h, sg = (float(r[k][0]) for k in ("z", "threshold", "sigma"))
        return OnsetResult(None if i < 0 else int(s[i]), None if i < 0 else float(r["effect"][0]), method,
                           dict(p), z if np.isfinite(z) else None, h if np.isfinite(h) else None,
                           sg if np.isfinite(sg) else None)
    o = onset(s, y, method=method, **params)
    eff = None
    if o is not None:
        fin = np.isfinite(y)
        before, after = y[fin & (s < o)], y[fin & (s >= o)]
        if before.size and after.size:
            eff = float(after.mean() - before.mean())
    return OnsetResult(o, eff, method, dict(params))


# ---------------------------------------------------------------------------------------------
# threshold


def _threshold_core(
    y: np.ndarray, margin: float, k: int, baseline_points: int, baseline: float | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Threshold detection on the NaN-compressed rows of ``y`` [B, n].

    Returns (j, order, yc, nfin, base): ``j`` [B] the COMPRESSED index of the onset (-1 if none),
    ``order`` [B, n] compressed -> original column, ``yc`` the compressed rows (finite values
    first, in order), ``nfin`` [B] finite counts and ``base`` [B] the baselines.
    """
    b_rows, n = y.shape
    mask = np.isfinite(y)
    order = np.argsort(~mask, axis=1, kind="stable")  # finite columns first, in their original order
    yc = np.take_along_axis(y, order, axis=1)
    nfin = mask.sum(axis=1)
    rank = np.arange(n)[None, :]
    if baseline is None:
        use = rank < np.minimum(baseline_points, nfin)[:, None]
        cnt = use.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.where(use, np.nan_to_num(yc), 0.0).sum(axis=1) / cnt
    else:
        base = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (b_rows,)).copy()
    if k > n:
        return np.full(b_rows, -1, dtype=np.int64), order, yc, nfin, base
    above = (rank < nfin[:, None]) & (yc > (base + margin)[:, None])  # NaN compares False
    # window sums of `above` over k consecutive finite points via a cumulative sum
    c = np.concatenate([np.zeros((b_rows, 1), dtype=np.int64), np.cumsum(above, axis=1)], axis=1)
    win = c[:, k:] - c[:, :-k]  # win[:, j] = above[j:j+k].sum(), j in 0..n-k
    hit = win == k
    has = hit.any(axis=1) & np.isfinite(base)
    j = np.where(has, np.argmax(hit, axis=1), -1).astype(np.int64)
    return j, order, yc, nfin, base


def threshold_onset_index(
    y: np.ndarray, margin: float = MARGIN, k: int = K, baseline_points: int = BASELINE_POINTS,
    baseline: float | np.ndarray | None = None,
) -> np.ndarray:
    """Vectorised threshold onset over rows of ``y`` [B, n]: the column index of the onset, -1 if none.

    numpy only and loop-free over rows, so the bootstrap can run it on 1000 replicates at once.
    NaN entries are skipped: each row is stably compressed so its finite values come first, runs of
    ``k`` are counted on the compressed row, and the hit is mapped back to its original column.
    ``baseline`` (scalar or [B]) overrides the mean of the first ``baseline_points`` finite values.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    j, order, _, _, _ = _threshold_core(y, margin, k, baseline_points, baseline)
    out = np.where(j >= 0, order[np.arange(y.shape[0]), np.maximum(j, 0)], -1)
    return out.astype(np.int64)


def onset_threshold(
    steps: Any, scores: Any, *, method: str = "threshold", margin: float = MARGIN, k: int = K,
    baseline_points: int = BASELINE_POINTS, baseline: float | None = None,
) -> int | None:
    """Threshold onset: first step above baseline + ``margin`` for ``k`` consecutive finite checkpoints.

    Defaults: ``margin=10`` points, ``k=5``, ``baseline_points=10`` (mean of the first 10
    finite scores; step 0 first; the rise must come after them). ``baseline`` (a number) overrides the estimate, e.g. a known base-model
    score. Why 10 baseline points: with checkpoint noise sigma=5 a single step-0 point makes the
    threshold itself wander by +-5, and flat runs then cross it by chance (21% false positives
    with 1 point, k=3); 10 points shrink that to +-1.6 and keep bootstrap replicates (noisier
    than the data) from false early onsets (5 points: 3% of replicates fired early, 10: 0.1%). Why k=5: at sigma=5 a margin of 10 is 2 sigma, so a point crosses it by
    chance 2.3% of the time; over ~280 checkpoints runs of 3 such points still happen (3.5% false
    positives, early false onsets on 2% of step runs), runs of 5 essentially never (0% in 200
    runs) while a real 40-point rise keeps every point above the margin. Cost: a rise in the
    last 4 finite checkpoints is not reported.
        """
    if k < 1 or baseline_points < 1:
        raise ValueError(f"threshold: k and baseline_points must be >= 1 (got k={k}, baseline_points={baseline_points})")
    s, y = as_series(steps, scores)
    if y.size == 0:
        return None
    i = int(threshold_onset_index(y[None, :], margin, k, baseline_points, baseline)[0])
    return None if i < 0 else int(s[i])


# ---------------------------------------------------------------------------------------------
# foot: threshold detection, located at the foot of the rise by a local hinge fit

WINDOW = 20  # checkpoints searched back from the margin crossing for the foot of the rise
PENALTY = 5.0  # a ramp must beat a step by PENALTY * sigma^2 in squared error (one more parameter)


def _row_sigma(yc: np.ndarray, nfin: np.ndarray, min_sigma: float) -> np.ndarray:
    """Robust noise sigma per compressed row (see ``robust_sigma``), floored at ``min_sigma``."""
    n = yc.shape[1]
    d = np.diff(yc, axis=1)
    ok = np.arange(n - 1)[None, :] < (nfin - 1)[:, None]
    d = np.where(ok, d, np.nan)
    with np.errstate(invalid="ignore"), quiet_runtime_warnings():
        med = np.nanmedian(d, axis=1, keepdims=True)
        mad = np.nanmedian(np.abs(d - med), axis=1)
    sig = 1.4826 * mad / np.sqrt(2.0)
    return np.maximum(np.nan_to_num(sig, nan=min_sigma), min_sigma)


def _locate_foot(
    rows: np.ndarray, j: np.ndarray, order: np.ndarray, yc: np.ndarray, nfin: np.ndarray, base: np.ndarray,
    tt: np.ndarray, sig: np.ndarray, window: int, tail: int, penalty: float, free_base: bool, block: int,
    ahead: int = 0,
) -> np.ndarray:
    """The hinge locator shared by ``foot`` and ``glr``: the COMPRESSED onset index of each row in ``rows``.

    ``j`` [B] is the anchor (compressed index) the detector found: the margin crossing for
    ``foot``, the change point for ``glr``. On the finite points from ``j - window`` to ``j + tail``
    the residuals from ``base`` are fitted by a flat level, a linear rise from the hinge and a
    plateau (see :func:`foot_onset_index`); hinges may lie up to ``ahead - 1`` points after the
    anchor (0 for ``foot``, whose anchor is already past the foot; a change-point estimate can
    overshoot by a point or two). ``sig`` [len(rows)] is each row's noise sigma.
    """
    n = yc.shape[1]
    out = np.empty(rows.size, dtype=np.int64)
    offs = np.arange(-window, tail + 1)  # window positions relative to the anchor j
    L = offs.size
    # candidate (hinge, plateau) positions inside the window: hinge before the anchor (+ ahead)
    hh, pp = np.triu_indices(L, k=1)
    keep = offs[hh] < ahead
    hh, pp = hh[keep], pp[keep]
    pos = np.arange(L)
    for lo in range(0, rows.size, block):
        r_ = rows[lo:lo + block]
        idx = j[r_][:, None] + offs[None, :]  # compressed indices [R, L]
        valid = (idx >= 0) & (idx < nfin[r_][:, None])
        cidx = np.clip(idx, 0, n - 1)
        res = np.where(valid, yc[r_[:, None], cidx] - base[r_][:, None], 0.0)
        tw = tt[order[r_[:, None], cidx]]  # time of each window point
        th, tp = tw[:, hh], tw[:, pp]  # [R, P]
        x = np.clip(tw[:, None, :] - th[:, :, None], 0.0, None)
        x = np.minimum(x, (tp - th)[:, :, None])
        x = np.where((pos[None, None, :] > hh[None, :, None]) & valid[:, None, :], x, 0.0)  # [R, P, L]
        sxy = np.einsum("rpl,rl->rp", x, res)
        sxx = np.einsum("rpl,rpl->rp", x, x)
        if free_base:
            # flat level fitted jointly with the rise over every finite point up to the window's end
            # (x = 0 before the hinge): far better determined than the first points' mean
            nn = np.minimum(j[r_] + tail + 1, nfin[r_]).astype(np.float64)
            upto = np.arange(n)[None, :] < nn[:, None]
            sres = np.where(upto, yc[r_] - base[r_][:, None], 0.0).sum(axis=1)
            sx = x.sum(axis=2)
            sxy = sxy - sx * (sres / nn)[:, None]
            sxx = sxx - sx * sx / nn[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.where((sxy > 0) & (sxx > 0), sxy * sxy / sxx, -np.inf)
        # a ramp has a finite point strictly between hinge and plateau start; a step has none
        ramp = (pp - hh > 1)[None, :] & valid[:, np.minimum(hh + 1, L - 1)]
        gain = gain - np.where(ramp, penalty * sig[lo:lo + block, None] ** 2, 0.0)
        gain = np.where(valid[:, hh] & valid[:, pp], gain, -np.inf)
        best = np.argmax(gain, axis=1)
        ok = np.isfinite(gain[np.arange(r_.size), best])
        on = j[r_] + offs[hh[best]] + 1  # first finite point after the hinge (compressed)
        out[lo:lo + block] = np.where(ok, on, j[r_])  # no admissible fit (e.g. a crossing at the first point)
    return out


def foot_onset_index(
    y: np.ndarray, margin: float = MARGIN, k: int = K, baseline_points: int = BASELINE_POINTS,
    window: int = WINDOW, penalty: float = PENALTY, baseline: float | np.ndarray | None = None,
    t: np.ndarray | None = None, min_sigma: float = 1.0, block: int = 64, free_base: bool = True,
) -> np.ndarray:
    """Vectorised ``foot`` onset over rows of ``y`` [B, n]: the column index, -1 if none.

    Detection is exactly :func:`threshold_onset_index` (same margin, k, baseline: same misses and
    false positives). The location is then moved back from the margin crossing ``j`` to the foot
    of the rise: on the finite points from ``j - window`` to ``j + 2k``, the residuals
    r = score - baseline are fitted by r = b * clip(t - t_h, 0, t_p - t_h) (flat at the baseline
    up to the hinge h, a linear rise, a plateau from p on) for every hinge h < j and plateau start
    p > h; a step is p = h + 1 (no finite point strictly inside the rise). The fit with the least
    squared error wins, a ramp paying ``penalty * sigma^2`` (sigma: robust noise estimate) so
    that noise does not turn a step seen across a NaN gap into a ramp. The onset is the first
    finite checkpoint after the hinge. ``t`` [n] is the time of each column (default 0..n-1,
    checkpoint units). All pairs (h, p) are scored at once per block of rows (numpy, no Python
    loop over rows): 1000 bootstrap replicates take well under a second.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    b_rows, n = y.shape
    j, order, yc, nfin, base = _threshold_core(y, margin, k, baseline_points, baseline)
    out = np.full(b_rows, -1, dtype=np.int64)
    rows = np.flatnonzero(j >= 0)
    if rows.size == 0:
        return out
    tt = np.arange(n, dtype=np.float64) if t is None else np.asarray(t, dtype=np.float64)
    sig = _row_sigma(yc[rows], nfin[rows], min_sigma)
    on = _locate_foot(rows, j, order, yc, nfin, base, tt, sig, window, 2 * k, penalty, free_base, block, ahead=0)
    out[rows] = order[rows, on]
    return out


def onset_foot(
    steps: Any, scores: Any, *, method: str = "foot", margin: float = MARGIN, k: int = K,
    baseline_points: int = BASELINE_POINTS, baseline: float | None = None, window: int = WINDOW,
    penalty: float = PENALTY, free_base: bool = True,
) -> int | None:
    """Foot onset: detected like ``threshold``, located at the foot of the rise.

    A trait emerges when it stays above baseline + ``margin`` (10) for ``k`` (5) consecutive
    finite checkpoints, the baseline being the mean of the first ``baseline_points`` (10) finite
    scores, exactly as ``threshold`` decides (so the same misses and false positives). Where
    ``threshold`` reports the margin crossing, ``foot`` reports where the rise starts: a least-
    squares hinge fit (flat at the baseline, linear rise, plateau) over the ``window`` (20)
    checkpoints before the crossing and 2k after it (see :func:`foot_onset_index`). On a step the
    two agree; on a ramp ``threshold`` lags by about margin / slope checkpoints and ``foot`` does
    not. Time is measured in steps (irregular spacing is handled).
    """
    if k < 1 or baseline_points < 1 or window < 1:
        raise ValueError(f"foot: k, baseline_points and window must be >= 1 (got k={k}, "
                         f"baseline_points={baseline_points}, window={window})")
    s, y = as_series(steps, scores)
    if y.size == 0:
        return None
    t = s.astype(np.float64) / max(float(np.median(np.diff(s))) if s.size > 1 else 1.0, 1e-12)
    i = int(foot_onset_index(y[None, :], margin, k, baseline_points, window, penalty, baseline, t=t,
                             free_base=free_base)[0])
    return None if i < 0 else int(s[i])


# ---------------------------------------------------------------------------------------------
# glr (default): noise-aware change-point test with a stated false-alarm rate

ALPHA = 0.005  # false-positive rate per never-emerging series that glr's threshold is set for
MIN_PRE = 5  # finite checkpoints before the change the test needs (a baseline to compare with)
MIN_POST = 5  # finite checkpoints after it: the rise must persist, so the last 4 cannot raise one
SPIKE = 3.5  # a point further than SPIKE sigma from the median of it and its neighbours is a spike
MIN_SIGMA = 0.25  # noise floor in points: a noiseless series must not turn rounding into evidence
GLR_WINDOW = 12  # checkpoints before the change point searched for the foot (it lies within a ramp's length)
GLR_TAIL = 8  # checkpoints after the change point the foot fit looks at (the window's far end)
# series lengths whose null distribution is simulated; others interpolate in log n
_NULL_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
_NULL_SIMS = 20000
_NULL_CACHE: dict[tuple[Any, ...], np.ndarray] = {}  # (n, min_pre, min_post, spike) -> null quantiles


def _compress(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, yc, nfin): each row's finite values first, in order (see ``_threshold_core``)."""
    mask = np.isfinite(y)
    if mask.all():  # nothing to move (the usual bootstrap case): skip the sort
        return np.broadcast_to(np.arange(y.shape[1]), y.shape), y, np.full(y.shape[0], y.shape[1])
    order = np.argsort(~mask, axis=1, kind="stable")
    return order, np.take_along_axis(y, order, axis=1), mask.sum(axis=1)


def _despike(yc: np.ndarray, nfin: np.ndarray, sig: np.ndarray, spike: float) -> np.ndarray:
    """Replace isolated single-checkpoint spikes by the median of the point and its two neighbours.

    The median of three keeps a step intact (at the edge two of the three points are on one
    side) but removes a point that disagrees with both neighbours; only points more than
    ``spike`` sigma from that median are replaced, so ordinary noise is left alone. The first and
    last finite points use the three nearest points. ``sig`` is [B] or [B, n].
    """
    b, n = yc.shape
    if n < 3:
        return yc
    i = np.arange(n)[None, :]
    c = np.clip(i, 1, np.maximum(nfin - 2, 1)[:, None])  # centre of the 3-point window of each point
    a = np.take_along_axis(yc, c - 1, axis=1)
    m = np.take_along_axis(yc, c, axis=1)
    z = np.take_along_axis(yc, np.minimum(c + 1, n - 1), axis=1)
    med = np.maximum(np.minimum(a, m), np.minimum(np.maximum(a, m), z))
    s = sig if np.ndim(sig) == 2 else np.asarray(sig)[:, None]
    bad = (i < nfin[:, None]) & (nfin[:, None] >= 3) & (np.abs(yc - med) > spike * s)
    return np.where(bad, med, yc)


def _split_stats(yc: np.ndarray, w: np.ndarray, length: np.ndarray, min_pre: int, min_post: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The standardised mean difference after vs before every split of each row's first
    ``length`` points: (best z [B], its split [B], effect = mean after - mean before [B]).

    ``w`` [B, n] are inverse-variance weights (1 / sigma_t^2); z = (mean_post - mean_pre) /
    sqrt(1 / W_pre + 1 / W_post) with weighted means, the likelihood-ratio statistic of a mean
    shift in Gaussian noise of known variance. Rows with no admissible split get z = -inf.
    """
    b, n = yc.shape
    inside = np.arange(n)[None, :] < length[:, None]
    wy = np.where(inside, w * np.nan_to_num(yc), 0.0)
    ww = np.where(inside, w, 0.0)
    cw = np.concatenate([np.zeros((b, 1)), np.cumsum(ww, axis=1)], axis=1)  # cw[:, tau] = W of [0, tau)
    cy = np.concatenate([np.zeros((b, 1)), np.cumsum(wy, axis=1)], axis=1)
    tw, ty = cw[:, -1:], cy[:, -1:]
    w_pre, y_pre = cw[:, :n], cy[:, :n]
    w_post, y_post = tw - w_pre, ty - y_pre
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = y_post / w_post - y_pre / w_pre
        z = eff / np.sqrt(1.0 / w_pre + 1.0 / w_post)
    tau = np.arange(n)[None, :]
    ok = (tau >= min_pre) & (tau <= length[:, None] - min_post) & np.isfinite(z)
    z = np.where(ok, z, -np.inf)
    best = np.argmax(z, axis=1)
    rows = np.arange(b)
    return z[rows, best], best, np.where(np.isfinite(z[rows, best]), eff[rows, best], np.nan)


def _null_at(n: int, min_pre: int, min_post: int, spike: float) -> np.ndarray:
    """The 1000 null quantiles of the statistic for series of ``n`` points (simulated once)."""
    key = (int(n), min_pre, min_post, float(spike))
    if key not in _NULL_CACHE:
        rng = np.random.default_rng(20261202 + n)
        zs = []
        chunk = max(1, min(_NULL_SIMS, 2_000_000 // n))
        for lo in range(0, _NULL_SIMS, chunk):
            m = min(chunk, _NULL_SIMS - lo)
            y = rng.standard_normal((m, n))
            zs.append(_glr_stat(y, np.full(m, n), None, min_pre, min_post, spike, 0.0)[0])
        z = np.concatenate(zs)
        _NULL_CACHE[key] = np.quantile(z, np.linspace(0.0005, 0.9995, 1000))
    return _NULL_CACHE[key]


def glr_threshold(n: int | np.ndarray, alpha: float = ALPHA, min_pre: int = MIN_PRE, min_post: int = MIN_POST,
                  spike: float = SPIKE) -> np.ndarray:
    """The statistic's (1 - ``alpha``) null quantile for series of ``n`` finite points (array ok).

    Simulated (``_null_at``: ``_NULL_SIMS`` Gaussian white-noise series per length, fixed seed,
    through exactly the pipeline the data goes through: local noise estimates, despiking, the
    maximum over splits, so the threshold accounts for the estimated sigma and the many splits
    tested; the statistic is scale-free, so one table serves every noise level and baseline) at
    the shortest testable length and the lengths of ``_NULL_GRID``, and interpolated
    linearly in log n between the two neighbours of each n (only those are simulated). An
    ``alpha`` below 0.001 is refused: 20000 simulations cannot place that quantile.
    """
    if not 0.001 <= alpha < 1:
        raise ValueError(f"glr: alpha must be in [0.001, 1), got {alpha}")
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))
    shortest = min_pre + min_post  # the shortest series with a split to test
    grid = np.asarray([shortest] + [g for g in _NULL_GRID if g > shortest], dtype=np.float64)
    lg = np.log(grid)
    q = np.linspace(0.0005, 0.9995, 1000)
    ok = n >= shortest
    x = np.clip(np.log(np.where(ok, n, shortest)), lg[0], lg[-1])
    hi = np.clip(np.searchsorted(lg, x), 1, grid.size - 1)
    need = np.unique(np.concatenate([hi - 1, hi]))  # only the grid lengths next to some n are simulated
    qg = np.full(grid.size, np.nan)
    for i in need:
        qg[i] = float(np.interp(1.0 - alpha, q, _null_at(int(grid[i]), min_pre, min_post, spike)))
    f = (x - lg[hi - 1]) / (lg[hi] - lg[hi - 1])
    return np.where(ok, qg[hi - 1] + f * (qg[hi] - qg[hi - 1]), np.inf)


SIGMA_BLOCK = 32  # first differences per block of the local noise estimate
TRIM = 3 / 32  # share of differences trimmed at each end of a block (a jump and two spikes)
TRIM2 = 0.0  # the same once spikes are removed: none (see _glr_stat)


def _trim_factor(p: np.ndarray) -> np.ndarray:
    """sd of a standard normal trimmed to its central 1 - 2p, relative to 1 (p = 0 gives 1)."""
    from scipy.stats import norm

    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 0.49)
    a = norm.isf(np.where(p > 0, p, 0.5))
    f = np.sqrt(np.clip(1.0 - 2.0 * a * norm.pdf(a) / (1.0 - 2.0 * p), 1e-6, None))
    return np.where(p > 0, f, 1.0)


def _local_sigma(yc: np.ndarray, nfin: np.ndarray, block: int = SIGMA_BLOCK, trim: float | None = None) -> np.ndarray:
    """Local robust noise sigma [B, n] of compressed rows: the trimmed standard deviation of the
    first differences / sqrt(2), in consecutive blocks of ``block`` differences (a short last
    block borrows its neighbour's value; a row shorter than half a block uses the whole row's
    MAD estimate). ``trim`` (default ``TRIM``) is the share dropped at each end of a block.

    Local rather than one value per series because the noise changes along a run: a trait that
    saturates near 0 or 100 after its rise has almost none there, and one sigma for the whole
    series would make the noise before the rise look like evidence. Trimmed rather than the MAD:
    on a score clipped at 0 or 100 most differences are 0 and the MAD then sees no noise where
    there is plenty. The trimming drops the one large difference at a jump and the two at a spike.
    """
    b, n = yc.shape
    if n < 2:
        return np.zeros((b, n))
    d = np.diff(yc, axis=1)
    d = np.where(np.arange(n - 1)[None, :] < (nfin - 1)[:, None], d, np.nan)
    nb = -(-(n - 1) // block)
    dp = np.full((b, nb * block), np.nan)
    dp[:, : n - 1] = d
    dp = np.sort(dp.reshape(b, nb, block), axis=2)  # NaN last
    cnt = np.isfinite(dp).sum(axis=2)
    k = np.round(cnt * (TRIM if trim is None else trim)).astype(np.int64)
    r = np.arange(block)[None, None, :]
    keep = (r >= k[..., None]) & (r < (cnt - k)[..., None])
    m = keep.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(keep, np.nan_to_num(dp), 0.0).sum(axis=2) / m
        var = np.where(keep, (np.nan_to_num(dp) - mu[..., None]) ** 2, 0.0).sum(axis=2) / np.maximum(m - 1, 1)
        # undo the trimming's shrinkage for Gaussian noise; a difference has variance 2 sigma^2
        sig = np.sqrt(var) / _trim_factor(k / np.maximum(cnt, 1)) / np.sqrt(2.0)
    short = cnt < block // 2
    if short.any() or not np.isfinite(sig).all():  # (the MAD of a whole row is the slow part: only when needed)
        whole = _row_sigma(yc, nfin, 0.0)
        # a short block takes the previous block's value (the last one of a row), or the row's own
        prev = np.concatenate([whole[:, None], sig[:, :-1]], axis=1)
        first_or_after_short = np.concatenate([np.ones((b, 1), bool), short[:, :-1]], axis=1)
        sig = np.where(short, np.where(first_or_after_short, whole[:, None], prev), sig)
        sig = np.where(np.isfinite(sig), sig, whole[:, None])
    di = np.clip(np.arange(n) - 1, 0, n - 2) // block  # point t's block: that of the difference before it
    return sig[:, di]


def _glr_stat(
    yc: np.ndarray, nfin: np.ndarray, sec: np.ndarray | None, min_pre: int, min_post: int, spike: float,
    min_sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """glr's statistic on compressed rows: (z [B], split [B], effect [B], sigma [B, n], despiked yc)."""
    b, n = yc.shape
    loc = _local_sigma(yc, nfin)
    if sec is None:
        sig = np.maximum(loc, max(min_sigma, 1e-9))
    else:
        # sampling noise per checkpoint, raised to the series' own local noise where that is larger
        # (checkpoint-to-checkpoint training noise comes on top of sampling)
        sig = np.maximum(np.fmax(sec, loc), max(min_sigma, 1e-9))
    yd = _despike(yc, nfin, sig, spike)
    # with the spikes gone, the noise again from the cleaned series, untrimmed: the trimming's
    # correction assumes Gaussian noise, and a score clipped at 0 or 100 has heavier-tailed
    # differences, whose noise a trimmed estimate understates (false onsets at low baselines).
    # A jump's one large difference inflates its block's sigma a little: conservative
    loc2 = _local_sigma(yd, nfin, trim=TRIM2)
    sig = np.maximum(loc2 if sec is None else np.fmax(sec, loc2), max(min_sigma, 1e-9))
    z, tau, eff = _split_stats(yd, 1.0 / sig**2, nfin, min_pre, min_post)
    return z, tau, eff, sig, yd


def glr_detect_index(
    y: np.ndarray, se: np.ndarray | None = None, alpha: float = ALPHA, min_pre: int = MIN_PRE,
    min_post: int = MIN_POST, spike: float = SPIKE, min_effect: float | None = None, window: int = GLR_WINDOW,
    penalty: float = PENALTY, t: np.ndarray | None = None, min_sigma: float = MIN_SIGMA,
) -> dict[str, np.ndarray]:
    """Vectorised ``glr`` over rows of ``y`` [B, n] (see :func:`onset_glr`).

    Returns arrays [B]: ``index`` (column of the onset, -1 if none), ``effect`` (points: mean
    after - mean before the change; NaN if none), ``z`` (the statistic at the first significant
    change), ``threshold`` (its null quantile for the row's length) and ``sigma`` (the median
    noise sigma used). ``se`` [n] or [B, n]: per-checkpoint standard errors (NaN = unknown).
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    b, n = y.shape
    order, yc, nfin = _compress(y)
    sec = None
    if se is not None:
        se_ = np.broadcast_to(np.asarray(se, dtype=np.float64), (b, n))
        sec = np.take_along_axis(se_, order, axis=1)
    z, tau, eff, sig, yd = _glr_stat(yc, nfin, sec, min_pre, min_post, spike, min_sigma)
    h = glr_threshold(nfin, alpha, min_pre, min_post, spike)
    sig_ok = z > h
    # the earliest significant change: test the stretch before the change found, as long as it
    # holds another (binary segmentation towards the start; the first rise is the onset)
    cur_tau, cur_z, cur_eff, cur_h = tau.copy(), z.copy(), eff.copy(), h.copy()
    active = sig_ok.copy()
    for _ in range(20):
        if not active.any():
            break
        r = np.flatnonzero(active)
        length = cur_tau[r]
        z2, t2, _ = _split_stats(yd[r], 1.0 / sig[r] ** 2, length, min_pre, min_post)
        h2 = glr_threshold(length, alpha, min_pre, min_post, spike)
        more = z2 > h2
        rr = r[more]
        cur_tau[rr], cur_z[rr], cur_h[rr] = t2[more], z2[more], h2[more]
        active[:] = False
        active[rr] = True
    if sig_ok.any():  # the rise's size: everything after the earliest change against everything before
        r = np.flatnonzero(sig_ok)
        w = 1.0 / sig[r] ** 2
        i = np.arange(n)[None, :]
        pre = i < cur_tau[r][:, None]
        post = (i >= cur_tau[r][:, None]) & (i < nfin[r][:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            mpre = (np.where(pre, w * yd[r], 0).sum(1) / np.where(pre, w, 0).sum(1))
            mpost = (np.where(post, w * yd[r], 0).sum(1) / np.where(post, w, 0).sum(1))
        cur_eff[r] = mpost - mpre
    if min_effect is not None:
        sig_ok &= cur_eff >= float(min_effect)
    index = np.full(b, -1, dtype=np.int64)
    effect = np.full(b, np.nan)
    rows = np.flatnonzero(sig_ok)
    if rows.size:
        tt = np.arange(n, dtype=np.float64) if t is None else np.asarray(t, dtype=np.float64)
        i = np.arange(n)[None, :]
        pre = i < cur_tau[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.where(pre, yd, 0).sum(1) / np.maximum(pre.sum(1), 1)
        before = np.arange(n)[None, :] < np.maximum(cur_tau[rows], 1)[:, None]
        with quiet_runtime_warnings():
            sig_pre = np.nanmedian(np.where(before, sig[rows], np.nan), axis=1)
        on = _locate_foot(rows, cur_tau, order, yd, nfin, base, tt, sig_pre, window,
                          GLR_TAIL, penalty, True, 64, ahead=2)
        index[rows] = order[rows, on]
        effect[rows] = cur_eff[rows]
    return {"index": index, "effect": effect, "z": np.where(sig_ok, cur_z, z), "threshold": np.where(sig_ok, cur_h, h),
            "sigma": np.median(sig, axis=1)}


def onset_glr(
    steps: Any, scores: Any, *, method: str = "glr", se: Any = None, alpha: float = ALPHA, min_pre: int = MIN_PRE,
    min_post: int = MIN_POST, spike: float = SPIKE, min_effect: float | None = None, window: int = GLR_WINDOW,
    penalty: float = PENALTY, min_sigma: float = MIN_SIGMA,
) -> int | None:
    """glr onset (the default): a persistent rise detected by a likelihood-ratio test whose
    false-positive rate on a never-emerging series is ``alpha``, located at the foot of the rise.

    Noise: ``se`` (per-checkpoint standard errors, e.g. :func:`emt.analysis.uncertainty.checkpoint_se`
    of the answers in scores.h5) when given, scaled up to the series' own first-difference
    sigma where that is larger; otherwise the robust series sigma alone (1.4826 MAD of first
    differences / sqrt 2), floored at ``min_sigma`` points. Spikes: a point more than ``spike``
    (4) sigma from the median of itself and its two neighbours is replaced by that median, so an
    isolated single-checkpoint spike is not a rise (a real rise keeps its neighbours up). NaN:
    skipped (the series is compressed to its finite points). Test: the maximum over splits of
    the standardised mean difference after vs before (the Gaussian likelihood ratio of one mean
    shift), with at least ``min_pre`` (5) points before and ``min_post`` (5) after; significant
    above the (1 - alpha) quantile of its null distribution for that many points (simulated with
    the same sigma estimate and despiking, :func:`glr_threshold`). The earliest significant
    change is kept (the stretch before a change is tested again). Location: the ``foot`` hinge
    fit around the change point (``window``, ``penalty``). ``min_effect`` (points, default None):
    an optional floor on the rise's size; the effect size is reported by :func:`detect`.
    """
    s, y = as_series(steps, scores)
    if y.size == 0:
        return None
    se_ = None if se is None else np.asarray(se, dtype=np.float64)
    if se_ is not None and se_.shape != y.shape:
        raise ValueError(f"glr: se has shape {se_.shape} but scores has {y.shape}")
    r = glr_detect_index(y[None, :], se_, alpha, min_pre, min_post, spike, min_effect, window, penalty,
                         t=s.astype(np.float64) / spacing(s), min_sigma=min_sigma)
    i = int(r["index"][0])
    return None if i < 0 else int(s[i])


# ---------------------------------------------------------------------------------------------
# cusum


def onset_cusum(
    steps: Any, scores: Any, *, method: str = "cusum", margin: float = MARGIN, drift: float | None = None,
    h: float = 8.0, baseline_points: int = 10, sigma: float | None = None,
    min_sigma: float = 1.0,
) -> int | None:
    """One-sided (upward) CUSUM on z = (score - baseline) / sigma.

    S_t = max(0, S_{t-1} + z_t - drift); an alarm is raised when S_t > ``h``; the onset is the
    first checkpoint of the excursion (the point after S was last 0), the usual CUSUM change-point
    estimate. Defaults: baseline = mean of the first ``baseline_points=10`` finite scores (CUSUM
    accumulates any baseline error, so it needs a tighter baseline than ``threshold``); ``sigma``
    = robust sigma from the MAD of first differences (floored at ``min_sigma=1`` point so a
    noiseless series does not alarm on rounding); ``drift`` = margin / (2 sigma), i.e. tuned to a
    shift of ``margin=10`` points (CUSUM's optimal reference value is half the shift); ``h=8``
    (h=5 gave 11.5% false alarms on flat sigma=5 runs, h=8 with 10 baseline points 1%). The
    excursion start is biased 1-2 checkpoints early when pre-change noise keeps S above 0, so
    expect ~80-85% within +-1 checkpoint at sigma=5 (the error table).
    """
    s, y = as_series(steps, scores)
    _, fs, fy = finite(s, y)
    if fy.size < 2:
        return None
    base = float(fy[: max(1, baseline_points)].mean())
    sig = max(float(sigma) if sigma is not None else robust_sigma(fy), min_sigma)
    d = margin / (2.0 * sig) if drift is None else float(drift)
    z = (fy - base) / sig - d
    S = 0.0
    start = 0
    # sequential by nature (a running max(0, .)); n is a few hundred, so a plain loop is cheap
    for i, zi in enumerate(z):
        if S == 0.0:
            start = i
        S = max(0.0, S + float(zi))
        if S > h:
            return int(fs[start])
    return None


# ---------------------------------------------------------------------------------------------
# ruptures (pelt, binseg)


def onset_ruptures(
    steps: Any, scores: Any, *, method: str = "pelt", model: str = "l2", pen: float | None = None,
    pen_scale: float = 3.0, margin: float = MARGIN, min_size: int = 2, sigma: float | None = None,
) -> int | None:
    """Change points from ``ruptures`` (PELT or binary segmentation); onset = first rise >= ``margin``.

    ``pelt`` runs ``ruptures.KernelCPD`` (its C implementation of PELT; kernel "linear" gives
    exactly the l2 cost of ``Pelt(model="l2")`` at ~1000x the speed), ``binseg`` runs
    ``ruptures.Binseg``. The penalty defaults to ``pen_scale * log(n) * sigma^2`` for
    ``model="l2"`` (the l2 cost is in squared score units, so the penalty must scale with the noise
    variance; ``pen_scale=3`` keeps false positives on flat runs rare, see the error table) and
    ``pen_scale * log(n)`` for ``model="rbf"`` (a bounded kernel cost, already scale-free).
    ``sigma`` defaults to the robust first-difference estimate. Onset = the first change point b
    whose following segment mean exceeds the mean of all finite points before b by >= ``margin``
    (default 10). A ramp is cut into several small steps, so the onset lands on the first step
    that clears the margin. ``min_size=2`` points per segment.
    """
    import ruptures  # optional dependency: only these methods need it

    if model not in ("l2", "rbf"):
        raise ValueError(f"{method}: model must be 'l2' or 'rbf', got {model!r}")
    s, y = as_series(steps, scores)
    _, fs, fy = finite(s, y)
    n = fy.size
    if n < 2 * min_size:
        return None
    if pen is None:
        sig = float(sigma) if sigma is not None else robust_sigma(fy)
        sig = max(sig, 1e-3 * max(1.0, float(np.ptp(fy))))  # a noiseless series still needs a positive penalty
        pen = pen_scale * np.log(n) * (sig**2 if model == "l2" else 1.0)
    if method == "pelt":
        algo = ruptures.KernelCPD(kernel="linear" if model == "l2" else "rbf", min_size=min_size)
    else:
        algo = ruptures.Binseg(model=model, min_size=min_size, jump=1)
    bkps = [int(b) for b in algo.fit(fy.reshape(-1, 1)).predict(pen=pen)]
    edges = [0, *bkps]
    csum = np.concatenate([[0.0], np.cumsum(fy)])
    for b, e in zip(edges[1:-1], edges[2:]):  # b: change point between [.., b) and [b, e)
        pre = csum[b] / b
        post = (csum[e] - csum[b]) / (e - b)
        if post - pre >= margin:
            return int(fs[b])
    return None


# ---------------------------------------------------------------------------------------------
# piecewise


def onset_piecewise(
    steps: Any, scores: Any, *, method: str = "piecewise", margin: float = MARGIN, plateau: bool = True,
    min_tail: int = K, criterion: str = "bic",
) -> int | None:
    """Two-segment fit: flat then a linear ramp starting at a hinge, vs flat only.

    Model y = a + b * clip(t - t_h, 0, t_p - t_h) with t = steps, fitted by least squares over
    every hinge t_h (and, with ``plateau=True``, the default, every plateau start t_p > t_h, so a
    ramp may level off as trait scores do; ``plateau=False`` ramps to the last checkpoint). The
    onset is the first checkpoint after the best hinge, returned when the fitted rise
    b * (t_p - t_h) is >= ``margin`` (default 10) and, with ``criterion="bic"`` (default), the
    ramp model has the lower BIC (4 parameters vs 1); ``criterion="none"`` uses the margin alone.
    At least ``min_tail=3`` finite points must follow the hinge. Every (hinge, plateau) pair is
    scored at once from prefix sums (O(1) each, numpy only), so a 281-point series takes ~ms.
    """
    if criterion not in ("bic", "none"):
        raise ValueError(f"piecewise: criterion must be 'bic' or 'none', got {criterion!r}")
    s, y = as_series(steps, scores)
    _, fs, fy = finite(s, y)
    n = fy.size
    if n < min_tail + 2:
        return None
    # small, centred time units keep the prefix sums well conditioned
    t = (fs - fs[0]).astype(np.float64) / max(float(np.median(np.diff(fs))), 1.0)
    yc = fy - fy.mean()
    syy = float(yc @ yc)

    def prefix(v: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(v)])

    T1, T2, Y1, TY = prefix(t), prefix(t * t), prefix(yc), prefix(t * yc)
    if plateau:
        hh, pp = np.triu_indices(n, k=1)
        keep = hh < n - min_tail
        hh, pp = hh[keep], pp[keep]
    else:
        hh = np.arange(0, n - min_tail)
        pp = np.full(hh.shape, n - 1)
    th, tp = t[hh], t[pp]
    d = tp - th
    m = (pp - hh - 1).astype(np.float64)  # points strictly on the ramp: h+1 .. p-1
    tail = (n - pp).astype(np.float64)  # points on the plateau: p .. n-1 (x = d there)
    a, b = hh + 1, pp  # ramp slice [a, b)
    r1, r2 = T1[b] - T1[a], T2[b] - T2[a]
    sx = r1 - m * th + tail * d
    sxx = r2 - 2 * th * r1 + m * th * th + tail * d * d
    sxy = (TY[b] - TY[a]) - th * (Y1[b] - Y1[a]) + d * (Y1[n] - Y1[pp])
    sxx_c = sxx - sx * sx / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = sxy / sxx_c
        sse = syy - sxy * slope
    sse = np.where((slope > 0) & (sxx_c > 1e-12), sse, np.inf)  # only rises count as emergence
    j = int(np.argmin(sse))
    if not np.isfinite(sse[j]):
        return None
    rise = float(slope[j] * d[j])
    if rise < margin:
        return None
    if criterion == "bic":
        tiny = 1e-12 * max(syy, 1.0)
        bic1 = n * np.log(max(float(sse[j]), tiny) / n) + 4 * np.log(n)
        bic0 = n * np.log(max(syy, tiny) / n) + 1 * np.log(n)
        if bic1 >= bic0:
            return None
    return int(fs[hh[j] + 1])


def _threshold_entry(steps: Any, scores: Any, method: str = "threshold", **p: Any) -> int | None:
    check_params(method, p, {"margin", "k", "baseline_points", "baseline"})
    return onset_threshold(steps, scores, **p)


def _glr_entry(steps: Any, scores: Any, method: str = "glr", **p: Any) -> int | None:
    check_params(method, p, set(GLR_PARAMS))
    return onset_glr(steps, scores, **p)


GLR_PARAMS = ("se", "alpha", "min_pre", "min_post", "spike", "min_effect", "window", "penalty", "min_sigma")


def _foot_entry(steps: Any, scores: Any, method: str = "foot", **p: Any) -> int | None:
    check_params(method, p, {"margin", "k", "baseline_points", "baseline", "window", "penalty", "free_base"})
    return onset_foot(steps, scores, **p)


def _cusum_entry(steps: Any, scores: Any, method: str = "cusum", **p: Any) -> int | None:
    check_params(method, p, {"margin", "drift", "h", "baseline_points", "sigma", "min_sigma"})
    return onset_cusum(steps, scores, **p)


def _ruptures_entry(steps: Any, scores: Any, method: str = "pelt", **p: Any) -> int | None:
    check_params(method, p, {"model", "pen", "pen_scale", "margin", "min_size", "sigma"})
    return onset_ruptures(steps, scores, method=method, **p)


def _piecewise_entry(steps: Any, scores: Any, method: str = "piecewise", **p: Any) -> int | None:
    check_params(method, p, {"margin", "plateau", "min_tail", "criterion"})
    return onset_piecewise(steps, scores, **p)


_DISPATCH: dict[str, Callable[..., int | None]] = {
    "glr": _glr_entry, "foot": _foot_entry, "threshold": _threshold_entry, "cusum": _cusum_entry, "pelt": _ruptures_entry,
    "binseg": _ruptures_entry, "piecewise": _piecewise_entry,
}
# The config checks monitor.method against ONSET_METHODS: both lists must name the same methods.
if set(_DISPATCH) != set(METHODS):
    raise ImportError(f"emt.analysis.onset: detectors {sorted(_DISPATCH)} differ from emt.core.config.ONSET_METHODS "
                      f"{sorted(METHODS)}; update both together")
