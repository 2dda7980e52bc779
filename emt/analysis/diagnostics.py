"""Diagnostics of *why* narrow fine-tuning misaligns: loss vs alignment, schedules at matched loss,
activation-based predictors and the overlap of activation shifts on training vs evaluation prompts.

numpy only (scipy where installed for exact p-values); every function takes plain arrays or the
dict that :func:`emt.store.scores.load` returns, so it works on scores.h5 files from any run.

Conventions: a *run* dict is ``emt.store.scores.load(path)``; ``loss["heldout"]`` is the held-out
in-domain loss per checkpoint (step 0 = the base model); trait scores are 0-100.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis.persona import persona_lead


# ---------------------------------------------------------------------------------------------
# correlations


def _pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x ({x.size}) and y ({y.size}) differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _rank(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    order = np.argsort(v, kind="stable")
    r = np.empty(v.size, dtype=np.float64)
    r[order] = np.arange(v.size, dtype=np.float64)
    _, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / cnt[inv]


def _r(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc) / den if den > 0 else math.nan


def correlation(x: Any, y: Any, method: str = "pearson", level: float = 0.95) -> dict[str, Any]:
    """Pearson or Spearman correlation of the finite pairs of ``x`` and ``y``.

    Returns ``{"r", "lo", "hi", "p", "n"}``: the interval is Fisher's z (r +- z_{level} /
    sqrt(n - 3), back-transformed; for Spearman the usual 1.06 / sqrt(n - 3) variance
    correction), ``p`` the two-sided p-value of r = 0 (t distribution with n - 2 df through
    scipy when installed, else the normal approximation). NaN pairs are dropped; fewer than
    4 pairs give NaN everywhere.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"correlation: method must be 'pearson' or 'spearman', got {method!r}")
    x, y = _pairs(x, y)
    n = int(x.size)
    nan = {"r": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan, "n": n}
    if n < 4:
        return nan
    r = _r(_rank(x), _rank(y)) if method == "spearman" else _r(x, y)
    if not math.isfinite(r):
        return nan
    from statistics import NormalDist

    zq = NormalDist().inv_cdf(0.5 + level / 2.0)
    se = (math.sqrt(1.06) if method == "spearman" else 1.0) / math.sqrt(n - 3)
    rc = min(max(r, -0.999999), 0.999999)
    z = math.atanh(rc)
    lo, hi = math.tanh(z - zq * se), math.tanh(z + zq * se)
    t = rc * math.sqrt((n - 2) / (1.0 - rc * rc))
    try:
        from scipy.stats import t as _t

        p = float(2.0 * _t.sf(abs(t), n - 2))
    except ImportError:
        p = 2.0 * (1.0 - NormalDist().cdf(abs(t)))
    return {"r": r, "lo": lo, "hi": hi, "p": p, "n": n}


def loss_vs_alignment(run: Mapping[str, Any], loss: str = "heldout") -> dict[str, dict[str, Any]]:
    """Within one run, across checkpoints: Pearson and Spearman of the ``loss`` series vs each trait.

    Returns ``{trait: {"pearson": {...}, "spearman": {...}}}`` (see :func:`correlation`). A
    negative r means the trait rises as the in-domain loss falls.
    """
    lv = np.asarray(run["loss"][loss], dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for t, d in run["traits"].items():
        s = np.asarray(d["score"], dtype=np.float64)
        out[t] = {m: correlation(lv, s, m) for m in ("pearson", "spearman")}
    return out


# ---------------------------------------------------------------------------------------------
# matched loss (runs and schedules compared at the same in-domain loss)


def score_at_loss(loss: Any, score: Any, level: float, smooth: int = 1) -> float:
    """The trait score at the first checkpoint whose held-out loss has fallen to ``level``.

    Loss falls with noise, so the first crossing of the running minimum is used; the score is
    linearly interpolated between the two checkpoints around the crossing (NaN where either
    score is missing) and averaged over ``smooth`` checkpoints ending there. NaN when the loss
    never reaches ``level``.
    """
    lv, sc = np.asarray(loss, dtype=np.float64), np.asarray(score, dtype=np.float64)
    ok = np.isfinite(lv)
    if not ok.any():
        return math.nan
    run_min = np.minimum.accumulate(np.where(ok, lv, np.inf))
    hit = np.flatnonzero(run_min <= level)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if smooth > 1:
        w = sc[max(0, i - smooth + 1): i + 1]
        w = w[np.isfinite(w)]
        return float(w.mean()) if w.size else math.nan
    if i == 0 or not np.isfinite(lv[i - 1]) or lv[i - 1] == lv[i]:
        return float(sc[i])
    prev = int(np.flatnonzero(ok[:i])[-1]) if ok[:i].any() else i
    frac = (run_min[prev] - level) / (run_min[prev] - lv[i]) if run_min[prev] != lv[i] else 1.0
    frac = min(max(frac, 0.0), 1.0)
    return float(sc[prev] + frac * (sc[i] - sc[prev]))


def matched_loss_levels(runs: Sequence[Mapping[str, Any]], n_levels: int = 5, loss: str = "heldout") -> np.ndarray:
    """``n_levels`` loss values every run reaches: evenly spaced over [highest final minimum, lowest
    start], so each level is a loss all runs pass through (empty when their ranges do not overlap)."""
    starts, ends = [], []
    for r in runs:
        lv = np.asarray(r["loss"][loss], dtype=np.float64)
        lv = lv[np.isfinite(lv)]
        if lv.size:
            starts.append(float(lv[0]))
            ends.append(float(lv.min()))
    if not starts:
        return np.array([])
    hi, lo = min(starts), max(ends)
    if not hi > lo:
        return np.array([])
    # leave the ends out: the start is step 0 for every run, the floor is reached by one run only
    return np.linspace(hi, lo, n_levels + 2)[1:-1]


def matched_loss_table(
    runs: Sequence[Mapping[str, Any]], levels: Sequence[float] | None = None, n_levels: int = 5,
    loss: str = "heldout", names: Sequence[str] | None = None,
) -> Any:
    """Trait scores of several runs at the same held-out loss: the 'safer minimum' comparison.

    One row per (run, trait, loss level) with the score at that level (:func:`score_at_loss`)
    and the step where the run reached it. Runs of a schedule sweep (or of different levels or
    domains) are compared at equal in-domain loss, so a lower score at the same loss is a safer
    way to learn the same task. Returns a pandas DataFrame.
    """
    import pandas as pd

    lv_all = np.asarray(levels, dtype=np.float64) if levels is not None else matched_loss_levels(runs, n_levels, loss)
    rows = []
    for i, r in enumerate(runs):
        name = names[i] if names else str(r.get("attrs", {}).get("run", i))
        lv = np.asarray(r["loss"][loss], dtype=np.float64)
        steps = np.asarray(r["steps"])
        run_min = np.minimum.accumulate(np.where(np.isfinite(lv), lv, np.inf))
        for t, d in r["traits"].items():
            for level in lv_all:
                hit = np.flatnonzero(run_min <= level)
                rows.append({"run": name, "trait": t, "loss_level": float(level),
                             "step": int(steps[hit[0]]) if hit.size else None,
                             "score": score_at_loss(lv, d["score"], float(level))})
    return pd.DataFrame(rows, columns=["run", "trait", "loss_level", "step", "score"])


# ---------------------------------------------------------------------------------------------
# ridge predictor


def _ridge_fit(X: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[float, np.ndarray, float, np.ndarray, np.ndarray]:
    """Standardise X, pick alpha by generalised cross-validation, return (alpha, w, y_mean, mu, sd)."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    ym = float(y.mean())
    yc = y - ym
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    uty = U.T @ yc
    n = y.size
    best = (math.inf, float(alphas[0]))
    for a in alphas:
        f = s * s / (s * s + a)  # shrinkage factors
        resid = yc - U @ (f * uty)
        dof = float(f.sum())
        gcv = float(resid @ resid) / n / max(1.0 - dof / n, 1e-6) ** 2
        if gcv < best[0]:
            best = (gcv, float(a))
    a = best[1]
    w = Vt.T @ ((s / (s * s + a)) * uty)
    return a, w, ym, mu, sd


def ridge_cv(
    X: Any, y: Any, folds: int = 5, alphas: Sequence[float] | None = None, seed: int = 0,
    n_boot: int = 1000, level: float = 0.95, repeats: int = 1,
) -> dict[str, Any]:
    """Cross-validated ridge regression from features ``X`` [n, d] to targets ``y`` [n].

    For the activation predictor: X = pre-fine-tuning prompt activations of each question, y =
    the question's post-fine-tuning trait score. Within each training fold X is standardised and
    alpha chosen by generalised cross-validation over ``alphas`` (default 10^-3 .. 10^5); the
    held-out fold is predicted. R^2 = 1 - SSE / SST over all out-of-fold predictions (SST around
    the mean of y), so it is ~0 for features unrelated to y (and may be slightly negative) and
    ~1 for a linear relation. ``repeats`` reshuffles the folds and averages R^2. The interval
    bootstraps the out-of-fold (y, prediction) pairs (``n_boot`` resamples). Rows with a NaN
    target or feature are dropped. Returns ``{"r2", "lo", "hi", "n", "alpha", "pred", "y"}``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"ridge_cv: X must be [n, d] with n = len(y); got {X.shape} and {y.size}")
    ok = np.isfinite(y) & np.isfinite(X).all(axis=1)
    X, y = X[ok], y[ok]
    n = y.size
    k = min(folds, n)
    if k < 2 or n < 4:
        return {"r2": math.nan, "lo": math.nan, "hi": math.nan, "n": n, "alpha": math.nan, "pred": np.array([]), "y": y}
    al = np.asarray(alphas if alphas is not None else np.logspace(-3, 5, 17), dtype=np.float64)
    rng = np.random.default_rng(seed)
    r2s, preds, chosen = [], [], []
    for _ in range(max(1, repeats)):
        perm = rng.permutation(n)
        pred = np.empty(n)
        for f in range(k):
            test = perm[f::k]
            train = np.setdiff1d(perm, test, assume_unique=True)
            a, w, ym, mu, sd = _ridge_fit(X[train], y[train], al)
            pred[test] = ((X[test] - mu) / sd) @ w + ym
            chosen.append(a)
        sst = float(((y - y.mean()) ** 2).sum())
        r2s.append(1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else math.nan)
        preds.append(pred)
    pred = preds[0]
    bi = rng.integers(0, n, size=(n_boot, n))
    yb, pb = y[bi], pred[bi]
    sst_b = ((yb - yb.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2b = 1.0 - ((yb - pb) ** 2).sum(axis=1) / sst_b
    r2b = r2b[np.isfinite(r2b)]
    a_ = (1.0 - level) / 2.0
    lo, hi = (np.quantile(r2b, [a_, 1.0 - a_]) if r2b.size else (math.nan, math.nan))
    return {"r2": float(np.mean(r2s)), "lo": float(lo), "hi": float(hi), "n": int(n),
            "alpha": float(np.median(chosen)), "pred": pred, "y": y}


# ---------------------------------------------------------------------------------------------
# subspace overlap


def principal_subspace(D: Any, k: int, center: bool = False) -> np.ndarray:
    """Orthonormal basis [d, k'] of the top-k principal directions of the rows of ``D`` [n, d].

    ``center=False`` (default) keeps the mean: for activation *shifts* the common direction of
    the shift is the signal, and centring would remove it. k' = min(k, rank) (numerical rank at
    1e-10 of the largest singular value).
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2:
        raise ValueError(f"principal_subspace: expected [n, d], got shape {D.shape}")
    D = D[np.isfinite(D).all(axis=1)]
    if center:
        D = D - D.mean(axis=0)
    if D.size == 0:
        return np.zeros((D.shape[1], 0))
    _, s, Vt = np.linalg.svd(D, full_matrices=False)
    rank = int((s > 1e-10 * max(float(s[0]), 1e-300)).sum()) if s.size else 0
    return Vt[: min(k, rank)].T


def subspace_overlap(A: Any, B: Any, k: int = 5, center: bool = False) -> float:
    """Overlap of the top-k principal subspaces of two sets of vectors (rows of ``A`` and ``B``).

    = mean of cos^2 of the principal angles = ||Ua^T Ub||_F^2 / k, with k = the smaller of the
    two subspace dimensions: 1 for identical subspaces, 0 for orthogonal ones, k_shared / k for
    subspaces sharing k_shared directions. NaN when either set is empty.
    """
    Ua, Ub = principal_subspace(A, k, center), principal_subspace(B, k, center)
    kk = min(Ua.shape[1], Ub.shape[1])
    if kk == 0:
        return math.nan
    M = Ua[:, :kk].T @ Ub[:, :kk]
    return float(np.clip((M * M).sum() / kk, 0.0, 1.0))


def overlap_series(
    train_acts: Any, eval_acts: Any, k: int = 5, base_index: int = 0, center: bool = False,
) -> np.ndarray:
    """Per checkpoint: overlap of the activation shifts (from checkpoint ``base_index``, step 0) on
    training prompts vs evaluation prompts.

    ``train_acts`` [n_ckpt, n_train_prompts, d] and ``eval_acts`` [n_ckpt, n_eval_prompts, d] (one
    layer; loop over layers for more). Returns [n_ckpt] (NaN at the base checkpoint, where both
    shifts are zero).
    """
    tr, ev = np.asarray(train_acts, dtype=np.float64), np.asarray(eval_acts, dtype=np.float64)
    if tr.ndim != 3 or ev.ndim != 3 or tr.shape[0] != ev.shape[0] or tr.shape[2] != ev.shape[2]:
        raise ValueError(f"overlap_series: expected [n_ckpt, prompts, d] with equal n_ckpt and d; got {tr.shape}, {ev.shape}")
    out = np.full(tr.shape[0], np.nan)
    for i in range(tr.shape[0]):
        if i == base_index:
            continue
        out[i] = subspace_overlap(tr[i] - tr[base_index], ev[i] - ev[base_index], k, center)
    return out


# ---------------------------------------------------------------------------------------------
# per run, from scores.h5


def final_question_scores(samples: Any, final_frac: float = 0.1) -> np.ndarray:
    """Each question's post-fine-tuning score: the NaN-aware mean over samples and over the last
    ``final_frac`` of checkpoints (at least one) of ``samples`` [n, q, s] -> [q]."""
    x = np.asarray(samples, dtype=np.float64)
    m = max(1, int(math.ceil(x.shape[0] * final_frac)))
    tail = x[-m:]
    ok = np.isfinite(tail)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, tail, 0.0).sum(axis=(0, 2)) / ok.sum(axis=(0, 2))


def run_diagnostics(
    run: Mapping[str, Any], acts: Mapping[str, Any] | None = None, k: int = 5, final_frac: float = 0.1,
    n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Every diagnostic that one run's scores.h5 supports.

    Args:
        run: :func:`emt.store.scores.load` output. acts: :func:`emt.store.activations.read_h5` output (None or
            without layers: only the loss-vs-alignment part).
        k: subspace dimension for the overlap. final_frac: share of last checkpoints that define a
            question's post-fine-tuning score for the predictor.

    Returns ``{"loss_alignment": {trait: {...}}, "predictor": {trait: {layer: ridge_cv result}},
    "overlap": {layer: [n]}, "persona": {trait: {"mean": [n, L], "shift": [n, L], ...}},
    "persona_lead": {trait: {layer: ...}} (:func:`emt.analysis.persona.persona_lead`), "layers": [...]}``;
    parts without data are empty.
    """
    persona = {t: d["persona"] for t, d in run["traits"].items() if d.get("persona")}
    out: dict[str, Any] = {"loss_alignment": loss_vs_alignment(run), "predictor": {}, "overlap": {},
                           "persona": persona, "layers": list((acts or {}).get("layers", [])),
                           "persona_lead": {t: persona_lead(run["steps"], run["traits"][t]["samples"], p,
                                                            n_boot=n_boot, seed=seed)
                                            for t, p in persona.items() if run["traits"][t].get("samples") is not None}}
    if not acts or not acts.get("layers"):
        return out
    layers = list(acts["layers"])
    evs = []
    for t, ta in acts.get("traits", {}).items():
        a = ta.get("activations")
        if not a or t not in run["traits"]:
            continue
        evs.append(a["prompt_mean"])
        y = final_question_scores(run["traits"][t]["samples"], final_frac)
        x0 = np.asarray(a["prompt_last"][0], dtype=np.float64)  # [q, L, H]: the base model (step 0)
        out["predictor"][t] = {l: ridge_cv(x0[:, i], y, folds=min(5, y.size), seed=seed, n_boot=n_boot)
                               for i, l in enumerate(layers)}
    train = acts.get("train") or {}
    if evs and "prompt_mean" in train:
        ev = np.concatenate(evs, axis=1).astype(np.float64)  # [n, all eval prompts, L, H]
        tr = np.asarray(train["prompt_mean"], dtype=np.float64)
        kk = max(1, min(k, tr.shape[1], ev.shape[1]))
        out["overlap"] = {l: overlap_series(tr[:, :, i], ev[:, :, i], kk) for i, l in enumerate(layers)}
        out["overlap_k"] = kk
    return out
