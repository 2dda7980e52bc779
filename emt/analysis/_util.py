"""Small shared helpers: input checking, NaN compression, robust noise estimates."""

from __future__ import annotations

from typing import Any

import numpy as np

def as_series(steps: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` as int64 and ``scores`` as float64, both 1-D and of equal length (ValueError otherwise)."""
    s = np.asarray(steps)
    y = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"steps and scores must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"steps ({s.shape[0]}) and scores ({y.shape[0]}) differ in length")
    if s.size > 1 and np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing")
    return s.astype(np.int64), y


def finite(steps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The finite points only: (positions in the original arrays, their steps, their scores).

    Every method works on the compressed series so that a NaN (a checkpoint with no score) is
    skipped, never read as 0 and never breaks a run of consecutive points.
    """
    idx = np.flatnonzero(np.isfinite(scores))
    return idx, steps[idx], scores[idx]


def spacing(steps: Any) -> float:
    """Checkpoint spacing in steps: the median difference (robust to one irregular gap); 1.0 if < 2 steps."""
    s = np.asarray(steps, dtype=np.float64)
    return float(np.median(np.diff(s))) if s.size > 1 else 1.0


def robust_sigma(y: np.ndarray) -> float:
    """Noise sigma from first differences: 1.4826 * MAD(diff) / sqrt(2).

    Differences cancel a slowly varying level, and the median ignores the few large differences at
    a jump, so this estimates the checkpoint-to-checkpoint noise even on a series with a change.
    Returns 0.0 for fewer than 3 finite points.
    """
    y = y[np.isfinite(y)]
    if y.size < 3:
        return 0.0
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def check_params(method: str, given: dict[str, Any], allowed: set[str]) -> None:
    """ValueError naming unknown parameters and the allowed ones."""
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"onset method {method!r}: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")


class quiet_runtime_warnings:
    """Silence numpy's RuntimeWarnings ('All-NaN slice', 'Mean of empty slice') where a NaN
    result is the intended answer (a row without enough finite points, a replicate without an onset)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)
