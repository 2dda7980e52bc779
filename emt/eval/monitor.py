"""Live monitoring: score checkpoints while training runs, detect onsets online, intervene.

:func:`follow` is what ``launch/eval_array.py --run NAME --follow`` and the monitor job beside a
training job (``launch/train.py --monitor``) run. Each round it looks for complete checkpoints
without a result, scores a batch of them with the eval task's code (:func:`emt.eval.task.run_eval_task`,
so results are identical to an offline evaluation and a checkpoint is never scored twice),
feeds the new scores in step order to one online detector per watched trait
(:mod:`emt.analysis.online`), raises alerts, and re-consolidates ``scores.h5`` from the results
present so far (atomic rename: the analysis can read it at any time), which also sends every
scored checkpoint to the trackers of ``training.report_to`` at its training step, next to the
training's own curves (:func:`emt.eval.consolidate.log_to_trackers`). While training runs it
scores the NEWEST pending checkpoints (up to ``monitor.max_batch``) to stay current; the older
ones it skipped are scored after training ends (they are then too late for the online
decision, which only moves forward in steps, but complete the offline record).

An alert is logged, written to ``<run>/monitor/alert-<trait>.json`` (once; a restarted monitor
does not fire it again) and POSTed to ``monitor.webhook_url`` when set. Its action: ``mark``
records it; ``stop`` and ``rollback`` write ``<run>/stop_request.json``, which the training job
honours at its next step boundary (:mod:`emt.train.run`), exiting cleanly with every checkpoint
intact; ``rollback`` also names the newest checkpoint before the onset as the run's result.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from emt.analysis.online import Alert, OnlineDetector
from emt.core import atomic, paths
from emt.core.logs import setup_logging
from emt.eval.consolidate import consolidate_run
from emt.eval.judge import JudgeIncomplete
from emt.eval.plan import EvalTask, eval_hash, eval_root, load_traits, targets
from emt.eval.task import EvalSession, needed_rank, run_eval_task
from emt.store.results import trait_means

if TYPE_CHECKING:
    from emt.sweep.runs import Run

log = logging.getLogger(__name__)

# Rounds in a row whose judgements were lost in transport before the monitor gives up.
MAX_JUDGE_FAILURES = 5


def watched_traits(cfg: Any) -> list[str]:
    """The traits the monitor watches: ``monitor.traits`` or every eval trait."""
    names = [t.name for t in load_traits(cfg)]
    if cfg.monitor.traits:
        unknown = [t for t in cfg.monitor.traits if t not in names]
        if unknown:
            raise ValueError(f"monitor.traits: {unknown} are not evaluated (eval.traits gives {names})")
        return list(cfg.monitor.traits)
    return names


def make_detectors(cfg: Any, run: "Run") -> dict[str, OnlineDetector]:
    """One online detector per watched trait, with the configured method and parameters."""
    m = cfg.monitor
    if m.method == "glr":  # the calibrated alarm: its threshold is simulated once for these settings
        params = {"false_alarm_rate": m.false_alarm_rate, "horizon": m.horizon, "baseline_points": m.baseline_points}
    else:
        params = {"margin": m.margin, "k": m.k, "baseline_points": m.baseline_points}
    return {t: OnlineDetector(t, m.method, run.name, **params) for t in watched_traits(cfg)}


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 10.0) -> bool:
    """POST ``payload`` as JSON; False (logged) on any failure: a dead webhook never stops monitoring."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (configured URL)
            return 200 <= resp.status < 300
    except Exception as exc:  # noqa: BLE001 (network errors of every kind)
        log.warning("alert webhook %s failed: %s", url, exc)
        return False


def rollback_step(run: "Run", onset_step: int) -> int:
    """The newest complete checkpoint strictly before ``onset_step`` (0 = the base model)."""
    before = [s for s, _ in paths.complete_checkpoints(run.path) if s < onset_step]
    return max(before, default=0)


def handle_alert(cfg: Any, run: "Run", alert: Alert) -> dict[str, Any] | None:
    """Record an alert and run its action once; None when this trait's alert was already handled."""
    f = paths.alert_file(run.path, alert.trait)
    if f.is_file():
        return None
    action = cfg.monitor.actions.get(alert.trait, "mark")
    event = {"run": run.name, "run_hash": run.hash, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "action": action, **alert.to_dict()}
    if action == "rollback":
        event["rollback_step"] = rollback_step(run, alert.onset_step)
    log.warning("ALERT %s -> action %s", alert.describe(), action)
    if action in ("stop", "rollback") and not paths.stop_request_file(run.path).is_file():
        atomic.write_json(paths.stop_request_file(run.path), event)
        log.warning("%s: stop requested (training stops at its next step boundary)", run.name)
    atomic.write_json(f, event)
    if cfg.monitor.webhook_url:
        event["webhook_ok"] = post_webhook(cfg.monitor.webhook_url, event)
    return event


def training_finished(run: "Run") -> bool:
    """True when the training job has ended its work (complete, or stopped on request)."""
    return paths.train_complete_file(run.path).is_file() or paths.intervention_file(run.path).is_file()


def consolidate_partial(run: "Run", ehash: str) -> Path | None:
    """scores.h5 from the results present so far (attribute ``partial``), atomically; None if none.

    The full consolidation (:func:`emt.eval.consolidate.consolidate_run`) replaces it once every target is
    scored. Loss and provenance come from the same places as there.
    """
    root = eval_root(run, ehash)
    steps = [s for s in targets(run) if paths.result_file(root, s).is_file()]
    if not steps:
        return None
    return Path(consolidate_run(run, ehash, steps=steps)["scores"])


def _next_batch(pending: list[int], size: int, done_training: bool) -> list[int]:
    """The checkpoints of the next round. While training runs: step 0 first (every detector's
    baseline), then the newest pending ones, which keep the online decision current; after it
    ends, the rest in step order complete the record."""
    if done_training:
        return pending[:size]
    if 0 in pending:
        return [0] + sorted(pending[1:])[-(size - 1):] if size > 1 else [0]
    return sorted(pending[-size:])


def follow(
    run: "Run", ehash: str | None = None, max_rounds: int | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score ``run``'s checkpoints as they appear until training has finished and all are scored.

    One :class:`emt.eval.task.EvalSession` (model, engine, judges) serves every round. Returns the
    monitor's statistics: rounds, checkpoints scored, alerts, and the lag at the start of each
    round: ``behind`` = complete checkpoints newer than the newest scored one (how stale the
    monitor's view is), ``pending`` = all complete checkpoints without a score. ``max_behind`` is
    the figure to compare with the detector's delay. ``on_round`` gets each round's statistics.
    """
    setup_logging()
    watch = Watch(run, ehash or eval_hash(run.config), on_round)
    try:
        watch.feed_new()  # a restarted monitor catches up on what is already scored (handled alerts stay handled)
        watch.loop(max_rounds)
    finally:
        watch.close()
    return watch.finish()


class Watch:
    """The state of one :func:`follow`: the detectors, what they were fed, the session, the statistics."""

    def __init__(self, run: "Run", ehash: str, on_round: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.run, self.cfg, self.ehash, self.on_round = run, run.config, ehash, on_round
        self.root = eval_root(run, ehash)
        self.dets = make_detectors(self.cfg, run)
        self.fed = -1  # the newest step fed to the detectors
        self.stats: dict[str, Any] = {"run": run.name, "eval_hash": ehash, "rounds": 0, "scored": 0, "max_behind": 0,
                                      "max_pending": 0, "alerts": [], "behind": []}
        self.idle_since = time.time()
        self.session: EvalSession | None = None
        self.judge_failures = 0  # rounds in a row whose judgements were lost

    def scored(self, step: int) -> bool:
        return paths.result_file(self.root, step).is_file()

    def feed_new(self) -> None:
        """Feed every result newer than the last one fed, in step order, to the detectors; handle alerts."""
        for s in sorted(s for s in targets(self.run) if s > self.fed and self.scored(s)):
            scores = trait_means(paths.result_file(self.root, s))
            for t, det in self.dets.items():
                a = det.update(s, scores.get(t))
                if a is not None:
                    ev = handle_alert(self.cfg, self.run, a)
                    self.stats["alerts"].append(ev or {"trait": t, "already_handled": True, **a.to_dict()})
            self.fed = s

    def loop(self, max_rounds: int | None) -> None:
        """Score rounds until training has finished and every target is scored (or the monitor idles out)."""
        m = self.cfg.monitor
        while True:
            done_training = training_finished(self.run)  # read BEFORE listing, so no checkpoint is missed at the end
            all_targets = targets(self.run)
            pending = [s for s in all_targets if not self.scored(s)]
            if pending:
                if not self.score_round(all_targets, pending, done_training):
                    continue  # the judge failed: the same checkpoints again
            elif done_training:
                break
            elif time.time() - self.idle_since > m.idle_timeout_min * 60:
                log.warning("%s: no new checkpoint for %.0f min and training has not finished; monitor exits "
                            "(rerun --follow to resume)", self.run.name, m.idle_timeout_min)
                break
            else:
                time.sleep(m.poll_s)
            if max_rounds is not None and self.stats["rounds"] >= max_rounds:
                break

    def score_round(self, all_targets: list[int], pending: list[int], done_training: bool) -> bool:
        """Score the next batch, feed it to the detectors and re-consolidate; False when the judge
        failed (after waiting a poll interval), with the checkpoints left pending."""
        cfg, m, stats = self.cfg, self.cfg.monitor, self.stats
        newest = max((s for s in all_targets if s not in pending), default=-1)
        behind = sum(1 for s in pending if s > newest)
        batch = _next_batch(pending, m.max_batch, done_training)
        t0 = time.time()
        if self.session is None:
            self.session = EvalSession(self.run, needed_rank(self.run, batch)
                                       or (cfg.lora.r if cfg.training.method == "lora" else 0))
        try:
            run_eval_task(EvalTask(self.run, tuple(batch), -1, self.ehash), session=self.session)
        except JudgeIncomplete as exc:
            # A judge outage must not end the watch: the failed checkpoints stay pending and
            # are re-judged (from their stored answers) next round. A judge that stays down
            # for MAX_JUDGE_FAILURES rounds in a row ends the monitor with the error.
            self.judge_failures += 1
            if self.judge_failures >= MAX_JUDGE_FAILURES:
                raise
            log.warning("%s monitor: %s; retrying in %.0f s (%d/%d)", self.run.name, exc, m.poll_s,
                        self.judge_failures, MAX_JUDGE_FAILURES)
            time.sleep(m.poll_s)
            return False
        self.judge_failures = 0
        stats["scored"] += len(batch)
        self.feed_new()
        consolidate_partial(self.run, self.ehash)
        stats["rounds"] += 1
        if not done_training:
            stats["max_behind"] = max(stats["max_behind"], behind)
            stats["max_pending"] = max(stats["max_pending"], len(pending))
        stats["behind"].append(behind)
        rnd = {"round": stats["rounds"], "behind": behind, "pending": len(pending), "batch": batch,
               "seconds": round(time.time() - t0, 2), "training_finished": done_training}
        log.info("%s monitor round %d: scored steps %s (%d checkpoints behind, %d pending, %.1f s)", self.run.name,
                 stats["rounds"], batch, behind, len(pending), rnd["seconds"])
        atomic.write_json(paths.monitor_state_file(self.run.path), {**stats, "last_round": rnd})
        if self.on_round:
            self.on_round(rnd)
        self.idle_since = time.time()
        return True

    def close(self) -> None:
        """Free the session's model and engine."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def finish(self) -> dict[str, Any]:
        """Consolidate in full once training has finished and everything is scored; write the final state."""
        if training_finished(self.run) and all(self.scored(s) for s in targets(self.run)):
            consolidate_run(self.run, self.ehash)
        self.stats["finished"] = training_finished(self.run)
        atomic.write_json(paths.monitor_state_file(self.run.path), self.stats)
        return self.stats
