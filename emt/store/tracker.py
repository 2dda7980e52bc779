"""Experiment trackers (``training.report_to``): TensorBoard and Weights & Biases.

Training logs its losses and learning rate through the trainer's own callbacks, pointed here at
the run's tracker directory (:func:`trainer_env`). The evaluation logs each checkpoint's trait
scores, coherence, NaN share and judge cost to the same tracker at the checkpoint's training
step (:func:`log_eval`), from every consolidation (the eval array's, and the monitor's after each
round), so a run's evaluation appears next to its loss curves while it trains.

Tags (``<trait>`` as in scores.h5, ``<judge>`` a judge label with ``/`` replaced by ``_``)::

    eval/<trait>/score          mean trait score (0-100) over answers, default judge
    eval/<trait>/coherence      mean coherence (0-100), default judge
    eval/<trait>/nan_share      share (0-1) of the default judge's trait scores that are NaN
    eval/<trait>/score/<judge>  every judge's mean trait score, when there are several judges
    eval/judge_cost_usd         estimated USD of judging that checkpoint, every priced judge
    eval/judge_cost_usd/<judge> the same per judge (only judges with a price)

A mean over no finite answer is not logged (its ``nan_share`` of 1 says why).

Idempotence: a consolidation sends the whole set of scored checkpoints, and a rerun may send
the same set again. TensorBoard: the eval scalars go to ``<run>/tracker/eval/`` as ONE event
file, written fresh by each consolidation and replacing the previous one (written elsewhere,
renamed in, then the old file removed), so readers never see a step twice once the write is
done. wandb (its history is append-only): only steps that are new, or whose values changed,
are logged; ``<run>/tracker/eval-logged.json`` records what was sent, and an identical set
sends nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emt.core import atomic, paths
from emt.core.locks import locked

log = logging.getLogger(__name__)

STEP_METRIC = "train/global_step"  # the x axis of the trainer's wandb charts (transformers' WandbCallback)
DEFAULT_WANDB_PROJECT = "emt"


class TrackerError(RuntimeError):
    """A tracker cannot be written (its package is missing); the message names the fix."""


def _tag_name(name: str) -> str:
    return name.replace("/", "_")


def _finite_mean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else math.nan


def checkpoint_scalars(scores: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """step -> {tag: value} from :func:`emt.store.scores.load` (``strings=False`` is enough).

    Non-finite means are left out (see the module's tag table)."""
    steps = [int(s) for s in scores["steps"]]
    out: dict[int, dict[str, float]] = {s: {} for s in steps}
    for t, tr in scores["traits"].items():
        samples = np.asarray(tr["samples"], dtype=np.float64)
        coherence = np.asarray(tr["coherence"], dtype=np.float64)
        several = len(tr.get("judges", {})) > 1
        for i, s in enumerate(steps):
            row = out[s]
            row[f"eval/{t}/score"] = _finite_mean(samples[i])
            row[f"eval/{t}/coherence"] = _finite_mean(coherence[i])
            row[f"eval/{t}/nan_share"] = float(np.isnan(samples[i]).mean()) if samples[i].size else math.nan
            if several:
                for j, jd in tr["judges"].items():
                    row[f"eval/{t}/score/{_tag_name(j)}"] = _finite_mean(np.asarray(jd["samples"], dtype=np.float64)[i])
    return {s: {k: v for k, v in row.items() if math.isfinite(v)} for s, row in out.items()}


def add_judge_costs(scalars: dict[int, dict[str, float]], costs: Mapping[int, Mapping[str, float]]) -> None:
    """Add ``eval/judge_cost_usd`` (total) and ``eval/judge_cost_usd/<judge>`` to the steps in ``costs``."""
    for s, per_judge in costs.items():
        if s not in scalars or not per_judge:
            continue
        for j, usd in per_judge.items():
            scalars[s][f"eval/judge_cost_usd/{_tag_name(j)}"] = float(usd)
        scalars[s]["eval/judge_cost_usd"] = float(sum(per_judge.values()))


TRACK_EXTRA = "track"  # setup.cfg's extra holding every tracker's package
# The modules each tracker can write with (found, not imported: an import costs seconds).
_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def missing(report_to: Sequence[str]) -> list[str]:
    """One problem per tracker of ``report_to`` whose package is not installed here, naming the
    config key, the tracker and the fix; [] when every selected tracker can be written.

    Shared by :func:`require` (a job, before training or logging) and the launchers' pre-flight
    (before anything is submitted)."""
    import importlib.util

    problems = []
    for name in report_to:
        modules = _TRACKER_MODULES.get(name, ())
        if modules and all(importlib.util.find_spec(m) is None for m in modules):
            problems.append(f"training.report_to includes {name}, but the {name} package is not installed in this "
                            f"environment: pip install 'emt[{TRACK_EXTRA}]' (or pip install {name}), "
                            f"or drop {name} from training.report_to")
    return problems


def require(report_to: Sequence[str]) -> None:
    """TrackerError naming the package to install when a selected tracker cannot be imported (:func:`missing`)."""
    problems = missing(report_to)
    if problems:
        raise TrackerError("; ".join(problems))


# ----------------------------------------------------------------------------------------------
# Training: the trainer's own callbacks, pointed at the run's tracker directory


def wandb_run(run_dir: Path, run_name: str) -> dict[str, str]:
    """The run's wandb identity ({"id", "project", "name"}), created once and stored in the run dir,
    so training, its restarts, every consolidation and the monitor log into the same wandb run.

    The project is ``WANDB_PROJECT`` at creation (default ``emt``); the id is the run directory's
    name plus a random suffix (two output roots with the same run never share a wandb run)."""
    with locked(paths.tracker_lock(run_dir)):
        return _wandb_record(run_dir, run_name)


def _wandb_record(run_dir: Path, run_name: str) -> dict[str, str]:
    """:func:`wandb_run` for a caller that holds the run's tracker lock."""
    f = paths.wandb_run_file(run_dir)
    if f.is_file():
        return json.loads(f.read_text())
    rec = {"id": f"{run_dir.name}-{secrets.token_hex(3)}", "name": run_name,
           "project": os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT}
    atomic.write_json(f, rec)
    return rec


def trainer_env(run_dir: Path, run_name: str, report_to: Sequence[str]) -> dict[str, str]:
    """Environment variables that point transformers' tracker callbacks at the run's tracker dir:
    TensorBoard's log dir, and wandb's run id (resumed, shared with the evaluation), project and dir."""
    env: dict[str, str] = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(paths.tracker_train_dir(run_dir))
    if "wandb" in report_to:
        rec = wandb_run(run_dir, run_name)
        env.update(WANDB_RUN_ID=rec["id"], WANDB_RESUME="allow", WANDB_PROJECT=rec["project"],
                   WANDB_DIR=str(paths.wandb_dir(run_dir)))
    return env


# ----------------------------------------------------------------------------------------------
# Evaluation: per-checkpoint scalars at the training step


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def log_eval(run_dir: Path, run_name: str, report_to: Sequence[str], scalars: Mapping[int, Mapping[str, float]],
             ) -> list[str]:
    """Send every checkpoint's ``scalars`` (step -> {tag: value}) to the selected trackers, at
    the training step; returns the trackers written (empty when they already hold exactly these).

    Safe to call any number of times, from several processes (a lock per run); see the module's
    note on idempotence. Raises :class:`TrackerError` when a selected tracker is not installed.
    """
    report_to = [r for r in report_to if r in ("tensorboard", "wandb")]
    if not report_to or not scalars:
        return []
    require(report_to)
    rows = {str(s): dict(sorted(v.items())) for s, v in sorted(scalars.items())}
    state_file = paths.tracker_state_file(run_dir)
    with locked(paths.tracker_lock(run_dir)):
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        written = []
        if "tensorboard" in report_to and (state.get("tensorboard") != _digest(rows)
                                           or not list(paths.tracker_eval_dir(run_dir).glob("events.out.tfevents.*"))):
            write_tensorboard(paths.tracker_eval_dir(run_dir), scalars)
            state["tensorboard"] = _digest(rows)
            written.append("tensorboard")
        if "wandb" in report_to:
            sent: dict[str, str] = state.get("wandb", {})
            todo = {int(s): v for s, v in rows.items() if sent.get(s) != _digest(v)}
            if todo:
                _log_wandb(run_dir, run_name, todo)
                state["wandb"] = {**sent, **{str(s): _digest(v) for s, v in todo.items()}}
                written.append("wandb")
        if written:
            atomic.write_json(state_file, state)
    return written


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TrackerError("writing TensorBoard event files needs torch with tensorboard (pip install "
                               "tensorboard) or tensorboardX") from None
    return SummaryWriter


def write_tensorboard(logdir: Path, scalars: Mapping[int, Mapping[str, float]]) -> Path:
    """Replace ``logdir``'s event files by one fresh event file holding ``scalars``; its path.

    Written in a temporary folder next to ``logdir`` and renamed in before the old files are
    removed: a reader sees the old file, or briefly both (the same steps twice), never none."""
    summary_writer = _summary_writer()
    logdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{logdir.name}-", dir=logdir.parent))
    try:
        w = summary_writer(log_dir=str(tmp))
        for s in sorted(scalars):
            for tag, v in sorted(scalars[s].items()):
                w.add_scalar(tag, v, global_step=int(s))
        w.close()
        [new] = list(tmp.glob("events.out.tfevents.*"))
        dest = logdir / new.name
        os.replace(new, dest)
        for old in logdir.glob("events.out.tfevents.*"):
            if old != dest:
                old.unlink(missing_ok=True)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _log_wandb(run_dir: Path, run_name: str, scalars: Mapping[int, Mapping[str, float]]) -> None:
    """(The caller holds the run's tracker lock.) Log ``scalars`` into the run's wandb run (the one training logs to), each row with
    ``train/global_step`` = its step, the x axis every metric of that run is plotted against.

    wandb's own step only increases, so eval rows that arrive after training went further are
    placed by ``train/global_step`` instead (``define_metric``). ``WANDB_MODE`` (offline,
    disabled) applies as usual; the API key comes from wandb's own login, never from emt."""
    import wandb

    rec = _wandb_record(run_dir, run_name)
    paths.wandb_dir(run_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(id=rec["id"], project=rec["project"], name=rec.get("name", run_name), resume="allow",
                     dir=str(paths.wandb_dir(run_dir)), job_type="eval")
    try:
        run.define_metric(STEP_METRIC)
        run.define_metric("eval/*", step_metric=STEP_METRIC)
        for s in sorted(scalars):
            run.log({**scalars[s], STEP_METRIC: int(s)})
    finally:
        run.finish()
