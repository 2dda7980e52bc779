"""Online onset detection: decide with only the checkpoints seen so far.

:class:`OnlineDetector` takes one checkpoint's score at a time (in step order) and, the first
time it decides a trait has emerged, returns an :class:`Alert` naming the trait, the onset step,
the step at which it was detected and the evidence.

With ``method="glr"`` (the default) the detector is :class:`CalibratedAlarm`: a sequential test
whose false-alarm rate per run under no change is a parameter (``monitor.false_alarm_rate``),
its threshold simulated for that rate (:func:`alarm_threshold`). Other methods rerun the batch
method on each prefix (the streaming result then equals the offline one on the same prefix).

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

from emt.analysis._util import check_params, spacing
from emt.analysis.onset import BASELINE_POINTS, DEFAULT_METHOD, MARGIN, K, onset
from emt.analysis.summary import run_identity


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
    z: float | None = None  # calibrated alarm (glr): the statistic, its threshold, the noise sigma
    threshold: float | None = None
    sigma: float | None = None
    false_alarm_rate: float | None = None

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
        if self.z is not None:
            return (f"{self.run + ': ' if self.run else ''}{self.trait} onset at step {self.onset_step} (detected at step "
                    f"{self.detected_step}, calibrated alarm at {self.false_alarm_rate:g} false alarms per run): "
                    f"statistic {self.z:.2f} > threshold {self.threshold:.2f}, running mean {self.baseline:.1f}, "
                    f"sigma {self.sigma:.2f}; recent scores {last}")
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
        self.alarm: CalibratedAlarm | None = None
        if method == "glr":
            # the calibrated alarm, not glr on each prefix: testing every prefix at glr's per-series
            # rate would add up to a far larger false-alarm rate over a run
            check_params("glr (online)", self.params, set(ALARM_PARAMS))
            self.alarm = CalibratedAlarm(**self.params)
        else:
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
        if self.alarm is not None:
            return self._update_alarm(step)
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

    def _update_alarm(self, step: int) -> Alert | None:
        v = self.scores[-1]
        if not math.isfinite(v):
            return None
        assert self.alarm is not None
        tau = self.alarm.push(v)
        if tau is None:
            return None
        fin = [(s, x) for s, x in zip(self.steps, self.scores) if math.isfinite(x)]
        o = fin[tau][0]
        # the foot of the rise, from the offline detector on what has been seen, when it agrees
        # that there is one at or before the change the alarm found
        located = onset(np.asarray(self.steps), np.asarray(self.scores), method="glr")
        if located is not None and located <= o:
            o = located
        recent = tuple((s, float(x)) for s, x in fin if s >= o)
        self.alert = Alert(self.trait, int(o), step, self.method, self.alarm.mean, 0.0, recent, self.run,
                           z=self.alarm.z, threshold=self.alarm.threshold, sigma=self.alarm.sigma,
                           false_alarm_rate=self.alarm.false_alarm_rate)
        return self.alert

    def feed(self, steps: Iterable[int], scores: Iterable[float | None]) -> Alert | None:
        """``update`` over many checkpoints; the first alert (or None)."""
        first = None
        for s, v in zip(steps, scores):
            a = self.update(s, v)
            first = first or a
        return first


ALARM_PARAMS = ("false_alarm_rate", "horizon", "baseline_points", "window", "clip")


def detection_delay_checkpoints(k: int = K) -> int:
    """Checkpoints between a step change's first point and its alert with threshold/foot: k - 1."""
    return k - 1


def replay(
    runs: Sequence[Mapping[str, Any]], early: str = "hallucination", late: str = "evil",
    method: str = DEFAULT_METHOD, alarm: Mapping[str, Any] | None = None, **params: Any,
) -> Any:
    """Replay the online detector over finished runs (``emt.store.scores.load`` dicts): the warning's record.

    One row per run: when the ``early`` trait's alert fired and when the ``late`` trait's onset
    (offline, on the whole run) is, ``lead_checkpoints`` = late onset - early alert step, in
    checkpoints (positive: the warning came in time, that many checkpoints ahead), whether the
    warning came before the late onset, and ``false_alarm`` for runs whose level is ``normal``
    (no misaligned data: any alert there is a false alarm). With ``method="glr"`` the online
    detector is the calibrated alarm (``alarm``: its parameters, e.g. ``false_alarm_rate``) and
    ``params`` go to the offline onset of the late trait. Returns a pandas DataFrame.
    """
    import pandas as pd

    rows = []
    for d in runs:
        name = str(d.get("attrs", {}).get("run", ""))
        steps = np.asarray(d["steps"])
        sp = spacing(steps)
        row: dict[str, Any] = {"run": name, "level": run_identity(d, name)["level"]}
        alerts = {}
        for t in (early, late):
            if t not in d["traits"]:
                continue
            det = OnlineDetector(t, method, name, **(dict(alarm or {}) if method == "glr" else params))
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


# ---------------------------------------------------------------------------------------------
# the calibrated alarm (method "glr"): a stated false-alarm rate per run

FALSE_ALARM_RATE = 0.01  # per run of HORIZON checkpoints with no change
HORIZON = 300  # checkpoints a run is watched for (the study's runs have 210-281)
ALARM_BASELINE = 10  # finite checkpoints seen before any decision
ALARM_WINDOW = 30  # the change is looked for among the last ALARM_WINDOW checkpoints
ALARM_CLIP = 3.0  # each score is winsorised to the running mean +- ALARM_CLIP sigma when it arrives
_ALARM_SIMS = 10000
_ALARM_CACHE: dict[tuple[Any, ...], float] = {}


class _AlarmState:
    """The sequential statistic of :class:`CalibratedAlarm`, vectorised over independent series
    (one for the monitor, thousands for the calibration): every array is [S]."""

    def __init__(self, size: int, horizon: int, baseline: int, window: int, clip: float) -> None:
        self.baseline, self.window, self.clip = baseline, window, clip
        self.cw = np.zeros((size, horizon + 1))  # prefix sums of the winsorised scores
        self.n = 0
        self.last = np.full(size, np.nan)
        self.absd = np.zeros(size)  # sum of the (capped) absolute first differences
        self.sigma = np.full(size, np.nan)

    def push(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append one finite score per series; (statistic [S], best split [S]) after it (-inf early)."""
        n = self.n
        if n >= self.cw.shape[1] - 1:  # past the horizon: grow (the rate is stated for the horizon)
            self.cw = np.concatenate([self.cw, np.zeros((self.cw.shape[0], self.cw.shape[1]))], axis=1)
        if n >= 1:
            d = np.abs(y - self.last)
            if n >= 3:  # cap a jump's or a spike's difference so it cannot inflate the noise much
                d = np.minimum(d, 5.0 * np.sqrt(2.0) * self.sigma)
            self.absd += d
            # mean |difference| of Gaussian noise is 2 sigma / sqrt(pi)
            self.sigma = np.maximum(self.absd / n * np.sqrt(np.pi) / 2.0, 1e-9)
        self.last = y
        if n >= 2:
            mean = self.cw[:, n] / n
            w = np.clip(y, mean - self.clip * self.sigma, mean + self.clip * self.sigma)
        else:
            w = y
        self.cw[:, n + 1] = self.cw[:, n] + w
        self.n = n = n + 1
        if n < self.baseline + 1:
            return np.full(y.shape, -np.inf), np.zeros(y.shape, dtype=np.int64)
        taus = np.arange(max(self.baseline, n - self.window), n)  # first point after the change
        pre = self.cw[:, taus] / taus
        post = (self.cw[:, n:n + 1] - self.cw[:, taus]) / (n - taus)
        z = (post - pre) / (self.sigma[:, None] * np.sqrt(1.0 / taus + 1.0 / (n - taus)))
        j = np.argmax(z, axis=1)
        return z[np.arange(z.shape[0]), j], taus[j]


def alarm_threshold(false_alarm_rate: float = FALSE_ALARM_RATE, horizon: int = HORIZON,
                    baseline: int = ALARM_BASELINE, window: int = ALARM_WINDOW, clip: float = ALARM_CLIP) -> float:
    """The alarm threshold whose false-alarm rate per run of ``horizon`` checkpoints is the given rate.

    Simulated (``_ALARM_SIMS`` white-noise runs of ``horizon`` checkpoints, fixed seed) through
    exactly the statistic the alarm computes, including its running noise and mean estimates, so
    no approximation enters; the statistic is scale-free, so one threshold serves every noise
    level and baseline. Cached per parameter set for the process (about a second to compute).
    """
    if not 0.001 <= false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in [0.001, 1), got {false_alarm_rate}")
    key = (float(false_alarm_rate), int(horizon), int(baseline), int(window), float(clip))
    if key not in _ALARM_CACHE:
        rng = np.random.default_rng(16_2026)
        st = _AlarmState(_ALARM_SIMS, horizon, baseline, window, clip)
        peak = np.full(_ALARM_SIMS, -np.inf)
        for _ in range(horizon):
            z, _t = st.push(rng.standard_normal(_ALARM_SIMS))
            peak = np.maximum(peak, z)
        _ALARM_CACHE[key] = float(np.quantile(peak, 1.0 - false_alarm_rate))
    return _ALARM_CACHE[key]


class CalibratedAlarm:
    """Online detection of a persistent rise with a stated false-alarm rate per run.

    Each new finite score is winsorised to the running mean +- ``clip`` sigma (so an isolated
    spike adds at most ``clip`` sigma of evidence, while a real rise keeps adding it), and the
    standardised difference between the mean after and before every split among the last
    ``window`` checkpoints is computed, sigma being the running mean absolute first difference
    (each difference capped at 5 sigma). The alarm fires when the largest exceeds
    :func:`alarm_threshold` for ``false_alarm_rate`` and ``horizon``: under no change, a run of
    ``horizon`` checkpoints raises a false alarm with that probability (measured by
    bench/online_alarm.py). NaN scores are skipped.
    """

    def __init__(self, false_alarm_rate: float = FALSE_ALARM_RATE, horizon: int = HORIZON,
                 baseline_points: int = ALARM_BASELINE, window: int = ALARM_WINDOW, clip: float = ALARM_CLIP) -> None:
        if baseline_points < 2 or window < 1 or horizon < baseline_points + 1 or clip <= 0:
            raise ValueError(f"alarm: need baseline_points >= 2, window >= 1, clip > 0 and horizon > baseline_points "
                             f"(got {baseline_points}, {window}, {clip}, {horizon})")
        self.false_alarm_rate, self.horizon = false_alarm_rate, horizon
        self.threshold = alarm_threshold(false_alarm_rate, horizon, baseline_points, window, clip)
        self._st = _AlarmState(1, horizon, baseline_points, window, clip)
        self.z = -math.inf

    def push(self, score: float) -> int | None:
        """Feed one finite score; the index (among the finite scores fed) of the change when the alarm fires."""
        z, tau = self._st.push(np.array([float(score)]))
        self.z = float(z[0])
        return int(tau[0]) if self.z > self.threshold else None

    @property
    def sigma(self) -> float:
        return float(self._st.sigma[0])

    @property
    def mean(self) -> float:
        n = self._st.n
        return float(self._st.cw[0, n] / n) if n else math.nan
