"""Uncertainty: bootstrap over questions and samples, and intervals across seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from emt.analysis._util import as_series, check_params, quiet_runtime_warnings, spacing
from emt.analysis.metrics import peak
from emt.analysis.onset import (
    BASELINE_POINTS, DEFAULT_METHOD, GLR_PARAMS, MARGIN, PENALTY, WINDOW, K, foot_onset_index, glr_detect_index,
    onset, threshold_onset_index,
)


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap estimate and percentile interval; unpacks as ``estimate, lo, hi``.

    ``estimate`` is the statistic on the full data (not the bootstrap mean); ``lo``/``hi`` are
    percentiles of the replicates where the statistic was defined; ``frac_none`` is the share of
    replicates where it was not (e.g. no onset), which should be reported alongside a CI.
    """

    estimate: float | None
    lo: float | None
    hi: float | None
    n_boot: int
    frac_none: float
    level: float

    def __iter__(self) -> Iterator[float | None]:
        return iter((self.estimate, self.lo, self.hi))


def check_samples(samples: Any) -> np.ndarray:
    """``samples`` as float64 [n_ckpt, q, s] (ValueError otherwise)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"samples must be [n_ckpt, questions, samples], got shape {x.shape}")
    return x


def mean_series(samples: Any) -> np.ndarray:
    """NaN-aware mean over questions and samples per checkpoint [n]; NaN where nothing is scored."""
    x = check_samples(samples).reshape(np.shape(samples)[0], -1)
    m = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, x, 0.0).sum(axis=1) / m.sum(axis=1)


def resampled_means(
    samples: Any, n_boot: int = 1000, seed: int | np.random.Generator = 0, within: bool = False,
) -> np.ndarray:
    """Bootstrap replicate series [n_boot, n_ckpt]: questions resampled with replacement and, with
    ``within=True``, samples within each drawn question too; NaN-aware means per checkpoint.

    ``within`` defaults to False: resampling both levels counts the within-question variance twice
    (the question means already carry it), so two-stage replicates are ~sqrt(2) noisier than the
    data warrant (measured: 8.3 vs 5 points at sigma=5); resampling the top level only is the
    standard, nearly unbiased choice for a mean over questions. ``within=True`` gives a
    conservative (wider) interval.

    The same resampling (which questions, which sample slots) is used at every checkpoint: the
    questions are a fixed set asked at each checkpoint, so their effects are shared across the
    trajectory. Vectorised as counts: a replicate is a weight per (question, sample) cell, and
    the means of all replicates are two matrix products (values and finite-masks by weights),
    so 1000 replicates of 281 x 20 x 10 take ~0.1 s.
    """
    x = check_samples(samples)
    n, q, s = x.shape
    rng = np.random.default_rng(seed)
    qi = rng.integers(0, q, size=(n_boot, q))
    si = rng.integers(0, s, size=(n_boot, q, s)) if within else np.broadcast_to(np.arange(s), (n_boot, q, s))
    flat = (qi[:, :, None] * s + si).reshape(n_boot, -1) + (np.arange(n_boot) * (q * s))[:, None]
    w = np.bincount(flat.ravel(), minlength=n_boot * q * s).reshape(n_boot, q * s).astype(np.float64)
    xf = x.reshape(n, q * s)
    m = np.isfinite(xf)
    num = np.where(m, xf, 0.0) @ w.T  # [n, B]
    den = m.astype(np.float64) @ w.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.ascontiguousarray(out.T)


def _percentiles(vals: np.ndarray, level: float) -> tuple[float | None, float | None]:
    v = vals[np.isfinite(vals)]
    if v.size == 0:
        return None, None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [a, 1.0 - a])
    return float(lo), float(hi)


def _as_float(v: Any) -> float:
    return math.nan if v is None else float(v)


StatFn = Callable[[np.ndarray, np.ndarray], Any]


def bootstrap(
    steps: Any, samples: Any, stat_fn: str | StatFn = "onset", n_boot: int = 1000, seed: int = 0,
    level: float = 0.95, batched: bool = False, within: bool = False, method: str = DEFAULT_METHOD,
    **params: Any,
) -> BootstrapResult:
    """Bootstrap a statistic of the mean trajectory over questions (and samples, ``within=True``).

    A max-type statistic (``peak_value``) is biased upwards in the replicates (they are noisier
    than the data), so its percentile interval can exclude the estimate; prefer onset/lead time.

    Args:
        steps: [n] steps.
        samples: [n, q, s] per-answer scores (NaN = missing).
        stat_fn: ``"onset"`` (default; uses ``method`` and ``params``), ``"peak_value"``,
            ``"peak_step"``, or a callable ``f(steps, series) -> number | None``; with
            ``batched=True`` the callable gets ``series`` [B, n] and returns [B] (NaN = None).
        n_boot: replicates (default 1000). seed: RNG seed (default 0; same seed, same result).
        level: CI level (default 0.95), percentile interval.
        within: also resample samples within questions (default False; see :func:`resampled_means`).
        method, **params: onset method and parameters for ``stat_fn="onset"``. The ``glr`` (default),
            ``foot`` and ``threshold`` methods run on all replicates at once (numpy, no Python loop).

    Returns:
        :class:`BootstrapResult` (unpacks as ``estimate, lo, hi``).
    """
    s, _ = as_series(steps, np.zeros(np.shape(steps)[0]))
    x = check_samples(samples)
    if x.shape[0] != s.size:
        raise ValueError(f"samples has {x.shape[0]} checkpoints but steps has {s.size}")
    full = mean_series(x)
    reps = resampled_means(x, n_boot, seed, within)
    fn, is_batched = _resolve(stat_fn, batched, method, params)
    est = fn(s, full[None, :])[0] if is_batched else _as_float(fn(s, full))
    vals = np.asarray(fn(s, reps), dtype=np.float64) if is_batched else np.array([_as_float(fn(s, r)) for r in reps])
    lo, hi = _percentiles(vals, level)
    return BootstrapResult(None if not np.isfinite(est) else float(est), lo, hi, n_boot,
                           float(np.mean(~np.isfinite(vals))), level)


def _resolve(stat_fn: str | StatFn, batched: bool, method: str, params: dict[str, Any]) -> tuple[StatFn, bool]:
    """The statistic as a function, and whether it takes [B, n] at once."""
    if callable(stat_fn):
        return stat_fn, batched
    if stat_fn == "onset":
        if method == "glr":
            check_params(method, params, set(GLR_PARAMS))
            kw = {k: v for k, v in params.items() if k != "se"}
            se = params.get("se")

            def batched_glr(st: np.ndarray, ys: np.ndarray) -> np.ndarray:
                # se is per checkpoint of the data; replicates share it (same questions and answers)
                i = glr_detect_index(ys, se, t=st.astype(np.float64) / spacing(st), **kw)["index"]
                return np.where(i >= 0, st[np.maximum(i, 0)].astype(np.float64), np.nan)

            return batched_glr, True
        if method in ("threshold", "foot") and not {"baseline"} & set(params):
            # the default methods run on all replicates at once (numpy, no Python loop over rows)

            if method == "threshold":
                check_params(method, params, {"margin", "k", "baseline_points"})
                kw = {"margin": MARGIN, "k": K, "baseline_points": BASELINE_POINTS, **params}

                def idx_fn(st: np.ndarray, ys: np.ndarray) -> np.ndarray:
                    return threshold_onset_index(ys, kw["margin"], kw["k"], kw["baseline_points"])
            else:
                check_params(method, params, {"margin", "k", "baseline_points", "window", "penalty", "free_base"})
                kw = {"margin": MARGIN, "k": K, "baseline_points": BASELINE_POINTS, "window": WINDOW,
                      "penalty": PENALTY, "free_base": True, **params}

                def idx_fn(st: np.ndarray, ys: np.ndarray) -> np.ndarray:
                    t = st.astype(np.float64) / spacing(st)
                    return foot_onset_index(ys, kw["margin"], kw["k"], kw["baseline_points"], kw["window"],
                                              kw["penalty"], t=t, free_base=kw["free_base"])

            def batched_onset(st: np.ndarray, ys: np.ndarray) -> np.ndarray:
                i = idx_fn(st, ys)
                return np.where(i >= 0, st[np.maximum(i, 0)].astype(np.float64), np.nan)

            return batched_onset, True
        return (lambda st, y: onset(st, y, method=method, **params)), False
    if stat_fn in ("peak_value", "peak_step"):
        col = 0 if stat_fn == "peak_value" else 1
        return (lambda st, y: peak(st, y)[col]), False
    raise ValueError(f"unknown stat_fn {stat_fn!r}; use 'onset', 'peak_value', 'peak_step' or a callable")


def bootstrap_lead_time(
    steps: Any, early_samples: Any, late_samples: Any, n_boot: int = 1000, seed: int = 0,
    level: float = 0.95, paired: bool = False, within: bool = False, method: str = DEFAULT_METHOD,
    **params: Any,
) -> BootstrapResult:
    """Bootstrap the lead time onset(late) - onset(early), in CHECKPOINTS.

    By default (``paired=False``) the two traits are resampled independently: each trait has its
    own question set, so there is no shared unit to resample, and the traits' answers come from
    independent generations. ``paired=True`` (only when both arrays have the same [q, s] shape,
    i.e. the same questions/answers scored for two traits) uses the same question and sample
    draws for both, keeping their correlation. Replicates where either onset is None are
    counted in ``frac_none``. ``within``: see :func:`resampled_means`.
    """
    s, _ = as_series(steps, np.zeros(np.shape(steps)[0]))
    e, l_ = check_samples(early_samples), check_samples(late_samples)
    if paired and e.shape != l_.shape:
        raise ValueError(f"paired bootstrap needs equal shapes, got {e.shape} and {l_.shape}")
    sp = spacing(s)
    fn, is_batched = _resolve("onset", False, method, params)
    ss = np.random.SeedSequence(seed)
    se, sl = (seed, seed) if paired else tuple(np.random.default_rng(c) for c in ss.spawn(2))
    reps_e, reps_l = resampled_means(e, n_boot, se, within), resampled_means(l_, n_boot, sl, within)

    def on(y: np.ndarray) -> np.ndarray:
        return fn(s, y) if is_batched else np.array([_as_float(fn(s, r)) for r in y])

    est = float((on(mean_series(l_)[None, :]) - on(mean_series(e)[None, :]))[0]) / sp
    vals = (on(reps_l) - on(reps_e)) / sp
    lo, hi = _percentiles(vals, level)
    return BootstrapResult(est if np.isfinite(est) else None, lo, hi, n_boot,
                           float(np.mean(~np.isfinite(vals))), level)


def seeds_ci(values: Sequence[float | None], level: float = 0.95, method: str = "t") -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) across seeds of one run; None entries (e.g. no onset) are dropped.

    ``method="t"`` (default): mean +- t_{df=n-1} * sd / sqrt(n), the right interval for a
    handful of seeds; ``"percentile"``: the empirical percentiles of the values (needs many
    seeds). With one value the interval is (None, None); with none everything is None.
    """
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None, None, None
    m = float(v.mean())
    if v.size == 1:
        return m, None, None
    if method == "percentile":
        lo, hi = _percentiles(v, level)
        return m, lo, hi
    if method != "t":
        raise ValueError(f"seeds_ci: method must be 't' or 'percentile', got {method!r}")
    half = _t_quantile(0.5 + level / 2.0, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - half, m + half


def _t_quantile(p: float, df: int) -> float:
    """Student-t quantile: scipy when installed; else exact for df 1-2 and the Abramowitz-Stegun
    26.7.5 expansion around the normal quantile for df >= 3 (error < 0.5% at df=3, shrinking fast)."""
    try:
        from scipy.stats import t as _t

        return float(_t.ppf(p, df))
    except ImportError:
        pass
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def checkpoint_se(samples: Any) -> np.ndarray:
    """Per-checkpoint standard error [n] of the mean score from its answers' spread (NaN-aware).

    The questions are the same at every checkpoint, so what a checkpoint's mean owes to WHICH
    questions were asked does not change along the run and is no noise for detecting a change
    over time; the noise is the sampling of answers within each question:
    se_t = sqrt(sum_q var_q,t / s_q,t) / q_t, with var_q,t the variance of question q's scored
    samples at checkpoint t (ddof=1) and q_t the questions with a score. NaN where a checkpoint
    has no question with two scored samples (then :func:`emt.analysis.onset.onset_glr` falls back
    to the series' own noise there).
    """
    x = check_samples(samples)
    m = np.isfinite(x)
    cnt = m.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(m, x, 0.0).sum(axis=2) / cnt
        var = np.where(m, (x - mu[..., None]) ** 2, 0.0).sum(axis=2) / (cnt - 1)
        ok = cnt >= 2
        qn = ok.sum(axis=1)
        se = np.sqrt(np.where(ok, var / cnt, 0.0).sum(axis=1)) / qn
    return np.where(qn > 0, se, np.nan)


@dataclass(frozen=True)
class OnsetComparison:
    """Onsets of two traits and the lead time from one bootstrap (``bootstrap_onsets``).

    ``onset_early``/``onset_late``: :class:`BootstrapResult` in steps; ``lead``: late - early in
    checkpoints; ``p_early_first``: the share of replicates (where both onsets exist) in which
    the early trait's onset comes strictly first, ties counting half; ``n_both``: those replicates.
    """

    onset_early: BootstrapResult
    onset_late: BootstrapResult
    lead: BootstrapResult
    p_early_first: float | None
    n_both: int
    replicates_early: np.ndarray  # [n_boot] onset steps (NaN = none), for pooling across seeds
    replicates_late: np.ndarray


def bootstrap_onsets(
    steps: Any, early_samples: Any, late_samples: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    within: bool = False, method: str = DEFAULT_METHOD, noise_from_samples: bool = True, paired: bool = False,
    **params: Any,
) -> OnsetComparison:
    """Onset intervals of both traits, the lead-time interval and P(early onset precedes late's),
    all from the same replicates (questions resampled; samples too with ``within=True``).

    With ``method="glr"`` and ``noise_from_samples=True`` (default) each trait's per-checkpoint
    standard error (:func:`checkpoint_se`) is the glr noise input. Traits are resampled
    independently (their questions differ, see :func:`bootstrap_lead_time`), unless ``paired``:
    then both arrays are two measures of the same answers (the judge's score and a persona
    projection, say; same shape) and every replicate draws the same questions for both.
    """
    s, _ = as_series(steps, np.zeros(np.shape(steps)[0]))
    e, l_ = check_samples(early_samples), check_samples(late_samples)
    if paired and e.shape != l_.shape:
        raise ValueError(f"paired bootstrap needs two measures of the same answers; shapes {e.shape} and {l_.shape}")
    sp = spacing(s)
    ss = np.random.SeedSequence(seed)
    ce, cl = ss.spawn(2)
    # paired: two generators from one seed draw identical question indices for equal shapes
    ge, gl = np.random.default_rng(ce), np.random.default_rng(ce if paired else cl)

    def one(x: np.ndarray, g: np.random.Generator) -> tuple[float, np.ndarray]:
        p = dict(params)
        if method == "glr" and noise_from_samples and "se" not in p:
            p["se"] = checkpoint_se(x)
        fn, is_b = _resolve("onset", False, method, p)
        reps = resampled_means(x, n_boot, g, within)
        full = mean_series(x)[None, :]
        if is_b:
            return float(fn(s, full)[0]), np.asarray(fn(s, reps), dtype=np.float64)
        return _as_float(fn(s, full[0])), np.array([_as_float(fn(s, r)) for r in reps])

    est_e, re = one(e, ge)
    est_l, rl = one(l_, gl)

    def res(est: float, vals: np.ndarray) -> BootstrapResult:
        lo, hi = _percentiles(vals, level)
        return BootstrapResult(est if np.isfinite(est) else None, lo, hi, n_boot, float(np.mean(~np.isfinite(vals))),
                               level)

    lead = (rl - re) / sp
    both = np.isfinite(re) & np.isfinite(rl)
    p = None if not both.any() else float(np.mean((re[both] < rl[both]) + 0.5 * (re[both] == rl[both])))
    return OnsetComparison(res(est_e, re), res(est_l, rl), res((est_l - est_e) / sp, lead), p, int(both.sum()), re, rl)


def pooled_seeds(comparisons: Sequence[OnsetComparison], steps_spacing: float, level: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
    """Lead time and P(early first) of one setting run with several seeds, seeds resampled too.

    A two-level bootstrap: replicate b draws the seeds with replacement and, for each drawn
    seed, its b-th question-level replicate (:func:`bootstrap_onsets`); the statistic is the
    mean lead over the drawn seeds. Returns ``{"lead", "lo", "hi", "p_early_first", "n_seeds"}``
    (checkpoints; ``lead`` = mean of the seeds' estimates).
    """
    k = len(comparisons)
    if k == 0:
        return {"lead": None, "lo": None, "hi": None, "p_early_first": None, "n_seeds": 0}
    re = np.stack([c.replicates_early for c in comparisons])  # [k, B]
    rl = np.stack([c.replicates_late for c in comparisons])
    b = re.shape[1]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, k, size=(b, k))
    cols = np.arange(b)[:, None]
    with quiet_runtime_warnings():  # a replicate whose drawn seeds all lack an onset has no lead: NaN, dropped below
        lead = np.nanmean(((rl - re) / steps_spacing)[pick, cols], axis=1) if b else np.array([])
    first = ((re < rl) + 0.5 * (re == rl)).astype(np.float64)
    first = np.where(np.isfinite(re) & np.isfinite(rl), first, np.nan)
    with np.errstate(invalid="ignore"), quiet_runtime_warnings():
        p = np.nanmean(first[pick, cols]) if b else np.nan
    lo, hi = _percentiles(lead, level)
    ests = [c.lead.estimate for c in comparisons if c.lead.estimate is not None]
    return {"lead": float(np.mean(ests)) if ests else None, "lo": lo, "hi": hi,
            "p_early_first": None if not np.isfinite(p) else float(p), "n_seeds": k}


def paired_seed_comparison(early_onsets: Sequence[float | None], late_onsets: Sequence[float | None],
                           spacing_steps: float = 1.0, level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of two traits' onsets across seeds (each seed pairs its own two onsets).

    Over the seeds where both onsets exist (needs >= 3): the mean lead (late - early, in
    checkpoints) with its t interval, the paired t-test's two-sided p-value and the exact
    Wilcoxon signed-rank p-value (scipy). Returns ``{"n", "mean_lead", "lo", "hi", "t_p",
    "wilcoxon_p"}``; every value None (n kept) with fewer than 3 pairs.
    """
    pairs = [(float(e), float(l_)) for e, l_ in zip(early_onsets, late_onsets)
             if e is not None and l_ is not None and np.isfinite(e) and np.isfinite(l_)]
    out: dict[str, Any] = {"n": len(pairs), "mean_lead": None, "lo": None, "hi": None, "t_p": None, "wilcoxon_p": None}
    if len(pairs) < 3:
        return out
    from scipy import stats

    d = np.array([l_ - e for e, l_ in pairs]) / spacing_steps
    m, lo, hi = seeds_ci(list(d), level)
    out.update(mean_lead=m, lo=lo, hi=hi)
    if np.all(d == d[0]):
        out.update(t_p=0.0 if d[0] != 0 else 1.0, wilcoxon_p=None if d[0] == 0 else float(2 * 0.5 ** len(d)))
        return out
    out["t_p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    try:
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    except ValueError:  # every difference zero
        out["wilcoxon_p"] = None
    return out
