"""Synthetic trajectories with known change points, and the onset-error table of every method.

Used by the tests and to document the methods' accuracy. A trajectory is flat at ``base`` until
checkpoint ``c`` and then rises by ``rise`` points linearly over ``ramp`` checkpoints
(``ramp=1`` is a step), then stays there; Gaussian noise of ``sigma`` points is added per
checkpoint. The known change point is ``c``: the first checkpoint whose noiseless value is above
``base``. Steps are spaced by 2 (0, 2, 4, ...) as in the study.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

def trajectory(
    n: int = 281, c: int | None = 140, rise: float = 40.0, ramp: int = 1, base: float = 10.0,
) -> np.ndarray:
    """The noiseless trajectory [n]; ``c=None`` gives a flat (never-emerging) one."""
    i = np.arange(n, dtype=np.float64)
    if c is None:
        return np.full(n, base)
    return base + rise * np.clip((i - c + 1) / ramp, 0.0, 1.0)


def crossing_index(truth: np.ndarray, margin: float = 10.0) -> int | None:
    """First checkpoint whose noiseless value exceeds truth[0] + margin: what ``threshold`` targets."""
    hit = np.flatnonzero(truth > truth[0] + margin)
    return int(hit[0]) if hit.size else None


def noisy(
    rng: np.random.Generator, n: int = 281, c: int | None = 140, rise: float = 40.0, ramp: int = 1,
    sigma: float = 5.0, nan_frac: float = 0.0, nan_run: int = 0, base: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, scores, truth): ``truth`` plus N(0, sigma) noise, then NaN gaps.

    ``nan_frac``: that fraction of checkpoints (never step 0) set to NaN at random;
    ``nan_run``: that many checkpoints starting at ``c`` set to NaN (a gap right at the change).
    """
    truth = trajectory(n, c, rise, ramp, base)
    y = truth + rng.normal(0.0, sigma, n)
    if nan_frac > 0:
        drop = rng.choice(np.arange(1, n), size=int(round(nan_frac * (n - 1))), replace=False)
        y[drop] = np.nan
    if nan_run and c is not None:
        y[c:c + nan_run] = np.nan
    return np.arange(n, dtype=np.int64) * 2, y, truth


def samples(
    rng: np.random.Generator, n: int = 281, q: int = 20, s: int = 10, c: int | None = 140,
    rise: float = 40.0, ramp: int = 1, sigma: float = 5.0, base: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, samples [n, q, s], truth): per-answer scores whose per-checkpoint mean has noise ``sigma``.

    Each answer is truth + N(0, sigma * sqrt(q * s)) (not clipped to 0-100, so the mean's noise is
    exactly ``sigma``).
    """
    truth = trajectory(n, c, rise, ramp, base)
    x = truth[:, None, None] + rng.normal(0.0, sigma * np.sqrt(q * s), (n, q, s))
    return np.arange(n, dtype=np.int64) * 2, x, truth


def _observed(y: np.ndarray, i: int | None) -> int:
    """The first checkpoint at or after ``i`` whose score is finite (what any method can see)."""
    fin = np.flatnonzero(np.isfinite(y[i:]))
    return int(i + fin[0]) if fin.size else int(i)


SCENARIOS: dict[str, dict[str, Any]] = {
    # name: trajectory kwargs; c is drawn per seed in [0.3 n, 0.7 n]
    "step": {"ramp": 1},
    "ramp5": {"ramp": 5},
    "ramp20": {"ramp": 20},
    "step+nan10%": {"ramp": 1, "nan_frac": 0.10},
    "step+nanrun": {"ramp": 1, "nan_run": 3},
    "flat": {"c": None},
}


def error_table(
    methods: Sequence[str] | None = None, n_seeds: int | dict[str, int] = 100, sigma: float = 5.0,
    rise: float = 40.0, n: int = 281, scenarios: dict[str, dict[str, Any]] | None = None,
    params: dict[str, dict[str, Any]] | None = None, seed: int = 0, verbose: bool = True,
) -> Any:
    """Onset error in checkpoints of each method on each scenario over ``n_seeds`` random seeds.

    Returns a pandas DataFrame, one row per (method, scenario): ``mae`` (mean |error| vs the
    known change point c, misses excluded), ``within1`` (% of runs within +-1 checkpoint of c),
    ``within1_cross`` (% within +-1 of the noiseless margin crossing, the threshold's own target),
    ``miss`` (% None on a rising run). Targets are moved to the first checkpoint at or after
    them that has a score (a NaN gap at the change hides it from every method), ``fp`` (% non-None on the flat scenario). Every method sees
    the same series. ``params`` maps a method (or a label "method:anything") to its parameters.
    """
    import pandas as pd

    from emt.analysis.onset import METHODS, onset

    methods = list(methods or METHODS)
    scenarios = scenarios or SCENARIOS
    params = params or {}
    rows = []
    for sc_name, sc in scenarios.items():
        for label in methods:
            m = label.split(":")[0]
            p = params.get(label, {})
            k = n_seeds[label] if isinstance(n_seeds, dict) else n_seeds
            errs, errs_x, miss, fp = [], [], 0, 0
            for i in range(k):
                rng = np.random.default_rng([seed, i])
                kw = dict(sc)
                c = kw.pop("c", int(rng.integers(int(0.3 * n), int(0.7 * n))))
                steps, y, truth = noisy(rng, n=n, c=c, rise=rise, sigma=sigma, **kw)
                o = onset(steps, y, method=m, **p)
                if c is None:
                    fp += o is not None
                    continue
                if o is None:
                    miss += 1
                    continue
                ci = int(np.searchsorted(steps, o))
                errs.append(ci - _observed(y, c))
                errs_x.append(ci - _observed(y, crossing_index(truth)))
            e, ex = np.abs(np.array(errs, dtype=float)), np.abs(np.array(errs_x, dtype=float))
            rising = sc.get("c", 0) is not None
            rows.append({
                "method": label, "scenario": sc_name, "seeds": k,
                "mae": float(e.mean()) if rising and e.size else np.nan,
                "within1": 100.0 * float((e <= 1).sum()) / k if rising else np.nan,
                "within1_cross": 100.0 * float((ex <= 1).sum()) / k if rising else np.nan,
                "miss": 100.0 * miss / k if rising else np.nan,
                "fp": 100.0 * fp / k if not rising else np.nan,
            })
    df = pd.DataFrame(rows)
    if verbose:
        with pd.option_context("display.width", 160, "display.max_rows", 200):
            print(f"\nonset error in checkpoints (sigma={sigma}, rise={rise}, n={n}, steps spaced by 2)")
            print(df.round(2).to_string(index=False))
    return df
