"""Persona-vector math: a judge-free direction per trait and its projections (pure numpy).

The persona vector of each layer is mean(pos response activations) - mean(neg response
activations) over the (pos, neg) answer pairs the judge confirms; at every checkpoint the
projection of the response activations onto the unit vector (per answer and mean) and of their
shift from step 0 are a trait signal that needs no judge. Building the vectors on a model is
:mod:`emt.eval.persona`; writing the projections into scores.h5 is :mod:`emt.store.activations`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRAIT_MIN = 50.0  # pos answers must score at least this on the trait, neg answers below it
COHERENCE_MIN = 50.0  # both answers of a pair must be at least this coherent


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
