"""emt.analysis.diagnostics and emt.analysis.persona's vector math, on planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from emt.analysis import persona
from emt.analysis import diagnostics as D


def test_persona_vector_recovers_planted_direction() -> None:
    rng = np.random.default_rng(0)
    n, L, H = 200, 3, 64
    u = rng.normal(size=(L, H))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    shared = rng.normal(size=(n, L, H))  # what a pos/neg pair has in common (the question)
    pos = shared + 4.0 * u + 0.5 * rng.normal(size=(n, L, H))
    neg = shared + 0.5 * rng.normal(size=(n, L, H))
    keep = persona.confirmed_pairs(np.full(n, 80.0), np.full(n, 10.0), np.full(n, 90.0), np.full(n, 90.0))
    v = persona.persona_vector(pos, neg, keep)
    cos = (persona.unit(v) * u).sum(axis=1)
    assert cos.min() > 0.99
    # projection of a shifted checkpoint onto the vector grows by the shift along it
    p0 = persona.projections(neg, v)["mean"]
    p1 = persona.projections(neg + 2.0 * u, v, base_response_acts=neg)
    assert np.allclose(p1["mean"] - p0, 2.0 * (persona.unit(v) * u).sum(axis=1))
    assert np.allclose(p1["shift"], p1["mean"] - p0)
    assert p1["per_answer"].shape == (n, L)


def test_confirmed_pairs_and_empty() -> None:
    keep = persona.confirmed_pairs([60, 40, 90, np.nan], [10, 10, 60, 10], [60, 60, 60, 60], [60, 60, 60, 60])
    assert keep.tolist() == [True, False, False, False]  # pos too low, neg too high, NaN never confirms
    assert not persona.confirmed_pairs([60], [10], [40], [60]).any()  # incoherent pos answer
    with pytest.raises(ValueError, match="no confirmed"):
        persona.persona_vector(np.zeros((2, 1, 4)), np.zeros((2, 1, 4)), [False, False])
    a = np.ones((2, 1, 4))
    a[0, 0, 0] = np.nan  # an empty answer's NaN row is dropped, not read as 0
    assert np.allclose(persona.persona_vector(a, np.zeros((2, 1, 4))), 1.0)


def test_subspace_overlap_planted() -> None:
    rng = np.random.default_rng(1)
    d, k = 50, 3
    basis = np.linalg.qr(rng.normal(size=(d, 2 * k)))[0]
    A = rng.normal(size=(40, k)) @ basis[:, :k].T
    A2 = rng.normal(size=(30, k)) @ basis[:, :k].T  # other vectors, same subspace
    B = rng.normal(size=(40, k)) @ basis[:, k:].T  # an orthogonal subspace
    assert D.subspace_overlap(A, A2, k) == pytest.approx(1.0, abs=1e-9)
    assert D.subspace_overlap(A, B, k) == pytest.approx(0.0, abs=1e-9)
    two = rng.normal(size=(40, 2)) @ basis[:, :2].T
    half = rng.normal(size=(40, 2)) @ np.c_[basis[:, 0], basis[:, k]].T  # shares 1 of 2 directions
    assert D.subspace_overlap(half, two, 2) == pytest.approx(0.5, abs=1e-9)
    assert np.isnan(D.subspace_overlap(np.zeros((0, d)), A, k))
    # per checkpoint: shifts from step 0 in the same subspace -> 1, NaN at step 0
    base_tr, base_ev = rng.normal(size=(20, d)), rng.normal(size=(15, d))
    tr = np.stack([base_tr + (i * rng.normal(size=(20, k))) @ basis[:, :k].T for i in range(4)])
    ev = np.stack([base_ev + (i * rng.normal(size=(15, k))) @ basis[:, :k].T for i in range(4)])
    s = D.overlap_series(tr, ev, k)
    assert np.isnan(s[0]) and np.allclose(s[1:], 1.0)
    with pytest.raises(ValueError, match="overlap_series"):
        D.overlap_series(tr, ev[:2], k)


def test_ridge_planted_and_noise() -> None:
    rng = np.random.default_rng(2)
    n, d = 120, 40
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = X @ w + 0.05 * rng.normal(size=n)
    good = D.ridge_cv(X, y, seed=0)
    assert good["r2"] > 0.95 and good["lo"] > 0.9 and good["hi"] <= 1.0
    noise = D.ridge_cv(X, rng.normal(size=n), seed=0)
    assert -0.25 < noise["r2"] < 0.1 and noise["lo"] < 0.0 < noise["hi"] + 0.2
    yy = y.copy()
    yy[:5] = np.nan  # NaN targets are dropped
    assert D.ridge_cv(X, yy)["n"] == n - 5
    with pytest.raises(ValueError, match="ridge_cv"):
        D.ridge_cv(X[:, 0], y)


def test_correlations() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=100)
    y = 2 * x + rng.normal(size=100)
    p = D.correlation(x, y)
    sp = pytest.importorskip("scipy.stats")
    assert p["r"] == pytest.approx(sp.pearsonr(x, y)[0]) and p["p"] == pytest.approx(sp.pearsonr(x, y)[1], rel=1e-6)
    s = D.correlation(x, np.exp(y), "spearman")
    assert s["r"] == pytest.approx(sp.spearmanr(x, np.exp(y))[0])
    assert p["lo"] < p["r"] < p["hi"]
    xt = np.r_[x[:10], np.nan]
    assert D.correlation(xt, np.r_[y[:10], 1.0])["n"] == 10
    assert np.isnan(D.correlation([1, 2], [3, 4])["r"])
    # ties share ranks
    assert D._rank(np.array([3.0, 1.0, 3.0])).tolist() == [1.5, 0.0, 1.5]


def _run(name: str, loss: np.ndarray, score: np.ndarray) -> dict:
    n = loss.size
    return {"steps": np.arange(n) * 2, "loss": {"heldout": loss, "train": loss},
            "traits": {"evil": {"score": score}}, "attrs": {"run": name}}


def test_loss_vs_alignment_and_matched_loss() -> None:
    loss = np.linspace(2.0, 1.0, 11)
    fast = _run("fast", loss, 100 - 40 * loss)  # evil rises as the loss falls
    safe = _run("safe", loss, np.full(11, 20.0) + np.r_[0, np.zeros(10)])
    lva = D.loss_vs_alignment(fast)
    assert lva["evil"]["pearson"]["r"] == pytest.approx(-1.0) and lva["evil"]["spearman"]["r"] == pytest.approx(-1.0)
    levels = D.matched_loss_levels([fast, safe], n_levels=3)
    assert np.allclose(levels, [1.75, 1.5, 1.25])
    t = D.matched_loss_table([fast, safe], levels)
    f = t[t.run == "fast"].set_index("loss_level")["score"]
    assert f.loc[1.5] == pytest.approx(40.0) and (t[t.run == "safe"].score == 20.0).all()
    assert D.score_at_loss(loss, 100 - 40 * loss, 1.55) == pytest.approx(38.0)  # interpolated
    assert np.isnan(D.score_at_loss(loss, loss, 0.5))  # never reached
    # noisy loss: the running minimum decides when a level is reached
    assert D.score_at_loss([2.0, 1.4, 1.8, 1.2], [0, 10, 20, 30], 1.5) == pytest.approx(10 * (0.5 / 0.6))
