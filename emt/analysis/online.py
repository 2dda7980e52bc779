"""Online onset detection: decide with only the checkpoints seen so far.

:class:`OnlineDetector` takes one checkpoint's score at a time (in step order) and, the first
time the onset method finds an onset in the prefix seen so far, returns an :class:`Alert`
naming the trait, the onset step, the step at which it was detected and the evidence (baseline,
margin, the scores that confirmed it). Every decision uses the batch method on the prefix, so
the streaming result equals the offline one on the same prefix by construction, never a
different algorithm.

Delay: with the ``foot``/``threshold`` methods a rise is confirmed when ``k`` consecutive
finite checkpoints clear the margin, so an alert fires ``k - 1`` checkpoints after the margin
crossing (4 checkpoints = 8 steps with the defaults) on a step change, plus ``margin / slope``
checkpoints on a ramp; the reported onset is the foot of the rise, before the alert.

:func:`replay` runs the detector over finished runs to evaluate the early warning itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from emt.analysis.onset import BASELINE_POINTS, DEFAULT_METHOD, MARGIN, K, onset


@dataclass(frozen=True)
class Alert:
    """A trait's onset, detected online."""

    trait: str
    onset_step: int  # where the rise starts (the method's onset)
    detected_step: int  # the checkpoint whose score completed the evidence
    method: str
    baseline: float  # mean of the first baseline points
    margin: float
    recent: tuple[tuple[int, float], ...] = field(default=())  # (step, score) from onset to detection
    run: str = ""

    @property
    def delay_steps(self) -> int:
        return self.detected_step - self.onset_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recent"] = [list(x) for x in self.recent]
        d["delay_steps"] = self.delay_steps
        return d

    def describe(self) -> str:
        last = ", ".join(f"{s}:{v:.1f}" for s, v in self.recent[-5:])
        return (f"{self.run + ': ' if self.run else ''}{self.trait} onset at step {self.onset_step} (detected at step "
                f"{self.detected_step}, {self.method}): baseline {self.baseline:.1f} + margin {self.margin:g} exceeded; "
                f"recent scores {last}")


class OnlineDetector:
    """Streaming onset detection for one trait of one run.

    ``update(step, score)`` appends a checkpoint (NaN allowed: skipped like offline) and returns an
    :class:`Alert` the first time an onset is found; later updates return None (one alert per
    trait and run). Steps must increase; a repeated step is ignored, so replaying already-seen
    checkpoints after a restart is harmless.
    """

    def __init__(self, trait: str, method: str = DEFAULT_METHOD, run: str = "", **params: Any) -> None:
        self.trait, self.method, self.run, self.params = trait, method, run, dict(params)
        onset([0, 1], [0.0, 0.0], method=method, **params)  # validates method and parameters now
        self.steps: list[int] = []
        self.scores: list[float] = []
        self.alert: Alert | None = None

    def update(self, step: int, score: float | None) -> Alert | None:
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            return None
        self.steps.append(step)
        self.scores.append(math.nan if score is None else float(score))
        if self.alert is not None:
            return None
        o = onset(np.asarray(self.steps), np.asarray(self.scores), method=self.method, **self.params)
        if o is None:
            return None
        y = np.asarray(self.scores)
        fin = y[np.isfinite(y)]
        bp = int(self.params.get("baseline_points", BASELINE_POINTS))
        base = float(self.params.get("baseline", fin[:bp].mean() if fin.size else math.nan))
        i0 = self.steps.index(o)
        recent = tuple((s, float(v)) for s, v in zip(self.steps[i0:], self.scores[i0:]) if math.isfinite(v))
        self.alert = Alert(self.trait, int(o), step, self.method, base, float(self.params.get("margin", MARGIN)),
                           recent, self.run)
        return self.alert

    def feed(self, steps: Iterable[int], scores: Iterable[float | None]) -> Alert | None:
        """``update`` over many checkpoints; the first alert (or None)."""
        first = None
        for s, v in zip(steps, scores):
            a = self.update(s, v)
            first = first or a
        return first


def detection_delay_checkpoints(k: int = K) -> int:
    """Checkpoints between a step change's first point and its alert with threshold/foot: k - 1."""
    return k - 1


def replay(
    runs: Sequence[Mapping[str, Any]], early: str = "hallucination", late: str = "evil",
    method: str = DEFAULT_METHOD, **params: Any,
) -> Any:
    """Replay the online detector over finished runs (``emt.store.load`` dicts): the warning's record.

    One row per run: when the ``early`` trait's alert fired and when the ``late`` trait's onset
    (offline, on the whole run) is, ``lead_checkpoints`` = late onset - early alert step, in
    checkpoints (positive: the warning came in time, that many checkpoints ahead), whether the
    warning came before the late onset, and ``false_alarm`` for runs whose level is ``normal``
    (no misaligned data: any alert there is a false alarm). Returns a pandas DataFrame.
    """
    import pandas as pd

    from emt.analysis._util import spacing
    from emt.analysis.summary import parse_run_name

    rows = []
    for d in runs:
        name = str(d.get("attrs", {}).get("run", ""))
        steps = np.asarray(d["steps"])
        sp = spacing(steps)
        row: dict[str, Any] = {"run": name, "level": parse_run_name(name)["level"]}
        alerts = {}
        for t in (early, late):
            if t not in d["traits"]:
                continue
            det = OnlineDetector(t, method, name, **params)
            alerts[t] = det.feed(steps, d["traits"][t]["score"])
        ea, la = alerts.get(early), alerts.get(late)
        late_onset = onset(steps, d["traits"][late]["score"], method=method, **params) if late in d["traits"] else None
        row.update({
            f"{early}_alert_step": ea.detected_step if ea else None,
            f"{early}_onset_step": ea.onset_step if ea else None,
            f"{late}_alert_step": la.detected_step if la else None,
            f"{late}_onset_step": late_onset,
            "lead_checkpoints": (late_onset - ea.detected_step) / sp if ea and late_onset is not None else None,
            "in_time": bool(ea and late_onset is not None and ea.detected_step < late_onset),
            "false_alarm": bool(row["level"] == "normal" and (ea or la)),
        })
        rows.append(row)
    return pd.DataFrame(rows)
