"""What launch/train.py calls: plan, check, and submit a sweep's training jobs.

Every input problem is found before the first job is submitted, and reported at once.
Relaunching submits only runs that are missing or incomplete and have no job pending or running.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from emt.core.config import Config, load_config
from emt.core.records import job_active
from emt.eval.monitor import watched_traits
from emt.jobs.slurm import submit_monitor, submit_train, wait_all
from emt.launchers.cost import format_costs, measured_for_runs, train_work
from emt.launchers.plan import format_plan, plan_runs
from emt.launchers.preflight import PreflightError, dry_run_exit, preflight, prepare_inputs, resolve_wait
from emt.launchers.running import report_results, run_queue
from emt.sweep.models import prepare_builtin_judges, prepare_builtin_model
from emt.sweep.runs import Run, build_sweep, run_state, schedule_optimizers

log = logging.getLogger(__name__)


def train_sweep(
    config: str | Path,
    *,
    cluster: str | Path | None = None,
    overrides: Sequence[str] = (),
    sweep: str = "all",
    runs: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    mode: str = "slurm",
    dry_run: bool = False,
    wait: bool | None = None,
    monitor: bool = False,
) -> int:
    """Plan, check and submit the training runs of a sweep; the entry point of launch/train.py.

    ``monitor=True`` submits a monitor job beside each training job (:func:`emt.eval.monitor.follow`):
    it scores checkpoints while training runs and acts on alerts (``monitor.*`` in the config).

    Returns a process exit code: 0 when everything selected is complete or submitted (and, when
    waiting, finished), 1 when a job failed, 2 when a dry run found problems. Input problems
    raise :class:`ConfigError` / :class:`PreflightError` before anything is submitted.
    """
    cfg = load_config(config, overrides, cluster)
    prepare_inputs(cfg, mode, dry_run)
    selected = build_sweep(cfg, sweep, runs, seeds)
    problems = preflight(cfg, selected, mode, dry_run=dry_run)
    pending = runs_to_submit(selected)

    rows = plan_runs(cfg, selected)
    print(format_plan(cfg, rows, [r.name for r in pending]))
    # The cost of the whole selection (GPU-hours and judge spend), with --monitor its monitor jobs.
    print(format_costs(cfg, train_work(cfg, rows), monitor=[r.name for r in pending] if monitor else None,
                       what=f"the {len(rows)} selected run(s), trained and scored",
                       measured=measured_for_runs(cfg, selected)))
    if sweep == "schedules":
        for note in schedule_optimizers(cfg)[1]:
            print(f"note: {note}")
    if dry_run:
        return dry_run_exit(problems)
    if problems:
        raise PreflightError(problems)
    if not pending:
        print("Nothing to submit: every selected run is complete or already running.")
        return 0
    prepare_builtin_model(cfg)
    if monitor:
        watched_traits(cfg)  # a bad monitor.traits fails before anything is submitted
        prepare_builtin_judges(cfg)
    return submit_training(cfg, pending, mode, resolve_wait(wait, mode), monitor)


def runs_to_submit(selected: Sequence[Run]) -> list[Run]:
    """The runs that are not complete and have no training job pending or running."""
    pending: list[Run] = []
    for run in selected:
        state, _ = run_state(run)
        if state == "complete":
            continue
        active = job_active(run.path)
        if active:
            log.info("%s: job %s is still pending or running; not submitting again", run.name, active)
            continue
        pending.append(run)
    return pending


def submit_training(cfg: Config, pending: Sequence[Run], mode: str, wait: bool, monitor: bool = False) -> int:
    """Submit training jobs (at most ``cluster.local_parallelism`` at a time locally), each with its
    monitor job when ``monitor``; optionally wait."""
    monitors: list[tuple[str, Any]] = []
    if mode == "slurm":
        jobs = [(run.name, submit_train(run, cfg.cluster, mode)) for run in pending]
        for name, job in jobs:
            print(f"submitted {name}: SLURM job {job.job_id}")
        if monitor:
            for run in pending:
                mj = submit_monitor(run, cfg.cluster, mode)
                monitors.append((f"{run.name} monitor", mj))
                print(f"submitted {run.name} monitor: SLURM job {mj.job_id}")
        return report_results({**wait_all(jobs), **wait_all(monitors)}) if wait else 0

    def start(run: Run, slot: int | None) -> Any:
        job = submit_train(run, cfg.cluster, mode, gpu_slot=slot)
        if monitor:  # beside the training job, in its own process (debug mode: after it, in line)
            monitors.append((f"{run.name} monitor", submit_monitor(run, cfg.cluster, mode, gpu_slot=slot)))
        return job

    items = [(run.name, lambda slot, run=run: start(run, slot)) for run in pending]
    results = run_queue(items, 1 if mode == "debug" else cfg.cluster.local_parallelism, mode)
    return report_results({**results, **wait_all(monitors)})
