"""emt.analysis.online: streaming onset detection and the replay of the early warning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emt import analysis as A
from emt.analysis import synthetic as syn
from emt.analysis.online import OnlineDetector, detection_delay_checkpoints, replay


def test_stream_equals_offline_prefix_and_delay() -> None:
    rng = np.random.default_rng(0)
    delays = []
    for i in range(40):
        c = int(rng.integers(40, 200))
        steps, y, _ = syn.noisy(rng, c=c, ramp=1 + i % 3, nan_frac=0.05)
        det = OnlineDetector("evil", run="r")
        alert = None
        for j, (s, v) in enumerate(zip(steps, y)):
            a = det.update(s, v)
            # the decision at each checkpoint is the offline method on the prefix seen so far
            offline = A.onset(steps[: j + 1], y[: j + 1])
            assert (a is not None) == (alert is None and offline is not None)
            alert = alert or a
        assert alert is not None and alert.onset_step == A.onset(steps[: int(alert.detected_step // 2) + 1],
                                                                 y[: int(alert.detected_step // 2) + 1])
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

    t = replay([run("medical_strong", 40, 60, 0), run("medical_normal", None, None, 1), run("math_mild", 70, 50, 2)])
    r = t.set_index("run")
    # hallucination at checkpoint 40 is confirmed ~4 checkpoints later; evil's onset is at 60
    assert r.loc["medical_strong", "lead_checkpoints"] == pytest.approx(60 - 44, abs=1)
    assert r.loc["medical_strong", "in_time"] and not r.loc["medical_strong", "false_alarm"]
    assert not r.loc["medical_normal", "false_alarm"] and pd.isna(r.loc["medical_normal", "hallucination_alert_step"])
    assert not r.loc["math_mild", "in_time"] and r.loc["math_mild", "lead_checkpoints"] < 0
