"""emt.analysis.persona as an alarm: the projection's onset against the judge's (paired bootstrap)
and the AUROC of the projection against the judge's verdict, on planted series."""

from __future__ import annotations

import numpy as np
import pytest

from emt.analysis import persona
from emt.analysis.uncertainty import bootstrap_onsets


def _brute_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (pos.size * neg.size))


def test_auroc_matches_mann_whitney_with_ties_and_drops_nan() -> None:
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=400), 1)  # many ties
    y = rng.random(400) < 0.3
    s[y] += 0.7
    assert persona.auroc(s, y) == pytest.approx(_brute_auroc(s, y))
    assert persona.auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert persona.auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert persona.auroc([1, np.nan, 3], [False, True, True]) == 1.0  # the NaN case is dropped
    assert np.isnan(persona.auroc([1, 2], [True, True]))  # one class only


def _run(n: int, q: int, s: int, rise_at: int, seed: int, height: float = 40.0) -> np.ndarray:
    """Per-answer values [n, q, s]: flat around 10, then a step of ``height`` from checkpoint rise_at."""
    rng = np.random.default_rng(seed)
    base = 10.0 + np.where(np.arange(n) >= rise_at, height, 0.0)
    return base[:, None, None] + rng.normal(0, 4.0, size=(n, q, s))


def test_paired_bootstrap_draws_the_same_questions_for_both_measures() -> None:
    steps = np.arange(0, 60, 2)
    x = _run(30, 10, 3, 12, seed=1)
    c = bootstrap_onsets(steps, x, x.copy(), n_boot=200, seed=3, paired=True)
    assert c.lead.estimate == 0 and c.lead.lo == 0 and c.lead.hi == 0  # identical measures: every replicate ties
    # unpaired, the two copies are resampled independently and the replicates' leads spread
    y = _run(30, 10, 3, 12, seed=1, height=2.0)  # a rise small enough for the questions drawn to matter
    c = bootstrap_onsets(steps, y, y.copy(), n_boot=200, seed=3, paired=True)
    assert np.array_equal(c.replicates_early, c.replicates_late, equal_nan=True)
    u = bootstrap_onsets(steps, y, y.copy(), n_boot=200, seed=3)
    assert np.nanstd(u.replicates_late - u.replicates_early) > 0
    with pytest.raises(ValueError, match="same answers"):
        bootstrap_onsets(steps, x, x[:, :5], n_boot=10, paired=True)


def test_persona_lead_finds_a_planted_lead_with_its_interval() -> None:
    """The projection (in percent of the gap) rises 4 checkpoints before the judge's scores."""
    n, q, s = 30, 12, 3
    steps = np.arange(0, 2 * n, 2)
    judge = _run(n, q, s, 16, seed=2)
    gap = np.array([5.0, 2.0])
    pct = np.stack([_run(n, q, s, 12, seed=3), _run(n, q, s, 12, seed=4)], axis=-1)  # [n, q, s, L]
    group = {"projection": pct * gap / 100.0, "gap": gap, "layers": [2, 4]}
    out = persona.persona_lead(steps, judge, group, n_boot=300, seed=0)
    assert set(out) == {2, 4}
    for r in out.values():
        assert r["persona_onset"] == 24 and r["judge_onset"] == 32 and r["lead"] == 4
        assert r["lead_lo"] <= 4 <= r["lead_hi"] and r["lead_lo"] > 0 and r["p_persona_first"] > 0.95
    assert persona.persona_lead(steps, judge, {"shift": np.zeros((n, 2))}) == {}  # no per-answer projections


def _scores_dict(steps: np.ndarray, score: np.ndarray, shift_pct: np.ndarray, gap: float = 4.0) -> dict:
    return {"steps": steps, "traits": {"evil": {"score": score, "persona": {
        "shift": (shift_pct * gap / 100.0)[:, None], "gap": np.array([gap]), "layers": [3]}}}}


def test_alarm_auroc_pools_runs_and_resamples_whole_runs() -> None:
    rng = np.random.default_rng(5)
    steps = np.arange(0, 40, 2)
    runs = []
    for k, rise in enumerate((6, 10, None, None)):  # two emerging runs, two that never do
        score = 10 + rng.normal(0, 2, steps.size)
        shift = rng.normal(0, 1, steps.size)
        if rise is not None:
            score[steps >= rise] += 30
            shift[steps >= rise - 2] += 8  # the projection moves too (a little earlier)
        runs.append(_scores_dict(steps, score, shift))
    runs.append({"steps": steps, "traits": {"evil": {"score": np.zeros(steps.size)}}})  # no persona: skipped
    a = persona.alarm_auroc(runs, "evil", n_boot=300)
    r = a[3]
    assert r["runs"] == 4 and r["resampled"] == "runs" and r["checkpoints"] == 4 * (steps.size - 1)
    assert r["positives"] == int((steps[1:] >= 6).sum() + (steps[1:] >= 10).sum())
    assert r["auroc"] > 0.95 and r["lo"] > 0.6 and r["hi"] <= 1.0
    # a projection unrelated to the verdict: the interval covers chance
    noise = [_scores_dict(steps, d["traits"]["evil"]["score"], rng.normal(0, 1, steps.size)) for d in runs[:4]]
    z = persona.alarm_auroc(noise, "evil", n_boot=300)[3]
    assert z["lo"] < 0.5 < z["hi"]
    # fewer than 3 runs: checkpoints are resampled instead
    assert persona.alarm_auroc(runs[:2], "evil", n_boot=50)[3]["resampled"] == "checkpoints"
    assert persona.alarm_auroc(runs[4:], "evil") == {}
