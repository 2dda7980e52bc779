"""emt.analysis.online: streaming onset detection, the calibrated alarm (glr) and the replay of the
early warning. Null runs and jumps are generated here (seeded); the alarm's false-alarm rate is
checked against the configured rate on null runs through the monitor's own detector class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emt import analysis as A
from tests.fakes import synthetic as syn
from emt.analysis.online import OnlineDetector, alarm_threshold, detection_delay_checkpoints, replay


def test_stream_equals_offline_prefix_and_delay() -> None:
    rng = np.random.default_rng(0)
    delays = []
    for i in range(40):
        c = int(rng.integers(40, 200))
        steps, y, _ = syn.noisy(rng, c=c, ramp=1 + i % 3, nan_frac=0.05)
        det = OnlineDetector("evil", method="foot", run="r")
        alert = None
        for j, (s, v) in enumerate(zip(steps, y)):
            a = det.update(s, v)
            # the decision at each checkpoint is the offline method on the prefix seen so far
            offline = A.onset(steps[: j + 1], y[: j + 1], method="foot")
            assert (a is not None) == (alert is None and offline is not None)
            alert = alert or a
        assert alert is not None and alert.onset_step == A.onset(steps[: int(alert.detected_step // 2) + 1],
                                                                 y[: int(alert.detected_step // 2) + 1], method="foot")
        if i % 3 == 0:  # steps: fired k - 1 finite checkpoints after the first high point
            fin = np.flatnonzero(np.isfinite(y))
            first = fin[fin >= c][0]
            delays.append(int(np.searchsorted(fin, alert.detected_step // 2) - np.searchsorted(fin, first)))
        assert alert.delay_steps >= 0 and "evil onset at step" in alert.describe()
    assert np.median(delays) == detection_delay_checkpoints() == 4


def test_no_alert_on_flat_and_idempotent_replays() -> None:
    steps, y, _ = syn.noisy(np.random.default_rng(1), c=None)
    det = OnlineDetector("hallucination")
    assert det.feed(steps, y) is None
    steps, y = np.arange(60) * 2, syn.trajectory(60, c=30)
    det = OnlineDetector("evil", method="threshold")
    a = det.feed(steps, y)
    assert a is not None and a.onset_step == 60 and a.detected_step == 68
    assert det.feed(steps, y) is None and det.update(200, 99.0) is None  # one alert per trait
    d = a.to_dict()
    assert d["delay_steps"] == 8 and d["recent"][0] == [60, 50.0] and d["margin"] == 10.0
    with pytest.raises(ValueError, match="unknown onset method"):
        OnlineDetector("evil", method="nope")


def test_replay_lead_and_false_alarms() -> None:
    def run(name: str, c_h: int | None, c_e: int | None, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        steps = np.arange(120) * 2
        return {"steps": steps, "attrs": {"run": name}, "traits": {
            "hallucination": {"score": syn.noisy(rng, n=120, c=c_h)[1]},
            "evil": {"score": syn.noisy(rng, n=120, c=c_e)[1]}}}

    runs = [run("medical_strong", 40, 60, 0), run("medical_normal", None, None, 1), run("math_mild", 70, 50, 2)]
    g = replay(runs).set_index("run")  # the default: glr's calibrated alarm, glr offline onsets
    assert g.loc["medical_strong", "in_time"] and 60 - 45 <= g.loc["medical_strong", "lead_checkpoints"] <= 60 - 40
    assert not g.loc["medical_normal", "false_alarm"] and not g.loc["math_mild", "in_time"]
    t = replay(runs, method="foot")
    r = t.set_index("run")
    # hallucination at checkpoint 40 is confirmed ~4 checkpoints later; evil's onset is at 60
    assert r.loc["medical_strong", "lead_checkpoints"] == pytest.approx(60 - 44, abs=1)
    assert r.loc["medical_strong", "in_time"] and not r.loc["medical_strong", "false_alarm"]
    assert not r.loc["medical_normal", "false_alarm"] and pd.isna(r.loc["medical_normal", "hallucination_alert_step"])
    assert not r.loc["math_mild", "in_time"] and r.loc["math_mild", "lead_checkpoints"] < 0


def _alarm_run(rng: np.random.Generator, n: int, jump: float = 0.0, at: int = 0, spikes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    sigma, base = rng.uniform(1.0, 8.0), rng.uniform(10.0, 40.0)
    y = base + rng.normal(0.0, sigma, n)
    y[at:] += jump * sigma
    if spikes:
        y[rng.choice(np.arange(12, n), size=spikes, replace=False)] += 7.0 * sigma
    return np.arange(n) * 2, y


def test_calibrated_alarm_false_alarm_rate_on_null_runs() -> None:
    """300 null runs of 120 checkpoints at a configured 5% per run: the alarm count lies in the
    binomial 99.9% range of that rate (4-28 of 300); at 1% it fires far less often."""
    rng = np.random.default_rng(2026)
    fired = {0.05: 0, 0.01: 0}
    for _ in range(300):
        steps, y = _alarm_run(rng, 120)
        for rate in fired:
            fired[rate] += OnlineDetector("evil", false_alarm_rate=rate, horizon=120).feed(steps, y) is not None
    assert 4 <= fired[0.05] <= 28, fired
    assert fired[0.01] <= 10 and fired[0.01] < fired[0.05], fired
    assert alarm_threshold(0.01, 120) > alarm_threshold(0.05, 120)


def test_calibrated_alarm_delay_spikes_and_evidence() -> None:
    """An 8-sigma step is alarmed within a few checkpoints; two isolated 7-sigma spikes are not a rise."""
    rng = np.random.default_rng(5)
    delays, spiky = [], 0
    for _ in range(40):
        steps, y = _alarm_run(rng, 200, jump=8.0, at=100)
        a = OnlineDetector("evil").feed(steps, y)
        assert a is not None and a.detected_step >= 200 and abs(a.onset_step - 200) <= 4
        delays.append(a.detected_step // 2 - 100)
        steps, y = _alarm_run(rng, 200, spikes=2)
        spiky += OnlineDetector("evil").feed(steps, y) is not None
    assert np.median(delays) <= 3 and max(delays) <= 8, delays
    assert spiky <= 2  # the configured 1% per run; 2 of 40 would already be unusual
    d = a.to_dict()
    assert d["z"] > d["threshold"] and d["false_alarm_rate"] == 0.01 and d["sigma"] > 0
    assert "calibrated alarm at 0.01 false alarms per run" in a.describe()
    with pytest.raises(ValueError, match="unknown parameter"):
        OnlineDetector("evil", margin=10)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        OnlineDetector("evil", false_alarm_rate=0.0)
