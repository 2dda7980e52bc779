"""Onset detection: the step at which a trait score emerges from its baseline.

All methods skip NaN scores (a checkpoint with no score is dropped, never read as 0) and return a
STEP (a value of ``steps``), or None when the trait never emerges. Scores are on the 0-100 scale.

Methods (``METHODS``):

``foot`` (default)
    detected exactly like ``threshold`` (below: same misses, same false positives), then located
    at the foot of the rise by a least-squares hinge fit (flat level, linear rise, plateau) over
    the ``window`` (20) checkpoints before the margin crossing; a ramp must beat a step by
    ``penalty`` (5) sigma^2. On a step it equals ``threshold``; on a ramp it finds where the rise
    starts rather than where it clears the margin. At sigma = 5 points on a 40-point rise: within
    +-1 checkpoint of the change on 99.5% of steps, 96% of 5-checkpoint ramps, 99% with 10% of
    scores missing, 96.5% with the change hidden in a 3-checkpoint NaN gap; 0% false positives
    on flat runs (``emt.analysis.synthetic.error_table``, 200 seeds).
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

from typing import Any, Callable

import numpy as np

from emt.analysis._util import as_series, check_params, finite, robust_sigma

METHODS: tuple[str, ...] = ("foot", "threshold", "cusum", "pelt", "binseg", "piecewise")
DEFAULT_METHOD = "foot"

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
        method: one of :data:`METHODS`; default ``"threshold"``.
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
# foot (default): threshold detection, located at the foot of the rise by a local hinge fit

WINDOW = 20  # checkpoints searched back from the margin crossing for the foot of the rise
PENALTY = 5.0  # a ramp must beat a step by PENALTY * sigma^2 in squared error (one more parameter)


def _row_sigma(yc: np.ndarray, nfin: np.ndarray, min_sigma: float) -> np.ndarray:
    """Robust noise sigma per compressed row (see ``robust_sigma``), floored at ``min_sigma``."""
    n = yc.shape[1]
    d = np.diff(yc, axis=1)
    ok = np.arange(n - 1)[None, :] < (nfin - 1)[:, None]
    d = np.where(ok, d, np.nan)
    with np.errstate(invalid="ignore"), _quiet_nan_slices():
        med = np.nanmedian(d, axis=1, keepdims=True)
        mad = np.nanmedian(np.abs(d - med), axis=1)
    sig = 1.4826 * mad / np.sqrt(2.0)
    return np.maximum(np.nan_to_num(sig, nan=min_sigma), min_sigma)


class _quiet_nan_slices:
    """Silence numpy's 'All-NaN slice' warning: a row with < 2 finite points gets min_sigma."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


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
    offs = np.arange(-window, 2 * k + 1)  # window positions relative to the crossing j
    L = offs.size
    # candidate (hinge, plateau) positions inside the window: hinge before the crossing
    hh, pp = np.triu_indices(L, k=1)
    keep = offs[hh] < 0
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
            nn = np.minimum(j[r_] + 2 * k + 1, nfin[r_]).astype(np.float64)
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
        on = np.where(ok, on, j[r_])  # no admissible fit (e.g. a crossing at the first point)
        out[r_] = order[r_, on]
    return out


def onset_foot(
    steps: Any, scores: Any, *, method: str = "foot", margin: float = MARGIN, k: int = K,
    baseline_points: int = BASELINE_POINTS, baseline: float | None = None, window: int = WINDOW,
    penalty: float = PENALTY, free_base: bool = True,
) -> int | None:
    """Foot onset (the default): detected like ``threshold``, located at the foot of the rise.

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
    "foot": _foot_entry, "threshold": _threshold_entry, "cusum": _cusum_entry, "pelt": _ruptures_entry,
    "binseg": _ruptures_entry, "piecewise": _piecewise_entry,
}
