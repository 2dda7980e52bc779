"""What launch/train.py calls: plan, check, and submit a sweep's training jobs.

Every input problem is found before the first job is submitted, and reported at once.
Relaunching submits only runs that are missing or incomplete and have no job pending or running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from emt.core import paths
from emt.core.config import Config, load_config
from emt.core.records import job_active
from emt.eval.monitor import watched_traits
from emt.jobs.slurm import submit_monitor, submit_train, wait_all
from emt.launchers.cost import CostPlan, cost_json, cost_plan, measured_for_runs, render_costs, train_work
from emt.launchers.plan import JSON_NEEDS_DRY_RUN, RunPlan, format_plan, plan_runs, plan_totals, run_plan_json
from emt.launchers.preflight import PreflightError, dry_run_exit, preflight, prepare_inputs, resolve_wait
from emt.launchers.running import report_results, run_queue, stop_with_launcher, watch
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
    json_out: TextIO | None = None,
) -> int:
    """Plan, check and submit the training runs of a sweep; the entry point of launch/train.py.

    ``monitor=True`` submits a monitor job beside each training job (:func:`emt.eval.monitor.follow`):
    it scores checkpoints while training runs and acts on alerts (``monitor.*`` in the config).
    ``json_out`` (with ``dry_run`` only): write the plan there as one JSON document
    (:func:`train_plan_json`) instead of printing the plan and cost tables.

    Returns a process exit code: 0 when everything selected is complete or submitted (and, when
    waiting, finished), 1 when a job failed, 2 when a dry run found problems. Input problems
    raise :class:`ConfigError` / :class:`PreflightError` before anything is submitted.
    """
    if json_out is not None and not dry_run:
        raise ValueError(JSON_NEEDS_DRY_RUN)
    cfg = load_config(config, overrides, cluster)
    prepare_inputs(cfg, mode, dry_run)
    selected = build_sweep(cfg, sweep, runs, seeds)
    problems = preflight(cfg, selected, mode, dry_run=dry_run)
    decisions = submit_decisions(selected)
    pending = [d.run for d in decisions if d.action == "submit"]

    rows = plan_runs(cfg, selected)
    # The cost of the whole selection (GPU-hours and judge spend), with --monitor its monitor jobs.
    costs = cost_plan(cfg, train_work(cfg, rows), monitor=[r.name for r in pending] if monitor else None,
                      measured=measured_for_runs(cfg, selected))
    notes = schedule_optimizers(cfg)[1] if sweep == "schedules" else []
    if json_out is not None:
        json_out.write(json.dumps(train_plan_json(cfg, rows, decisions, costs, notes, problems), indent=2) + "\n")
    else:
        print(format_plan(cfg, rows, [r.name for r in pending]))
        print(render_costs(cfg, costs, what=f"the {len(rows)} selected run(s), trained and scored"))
        for note in notes:
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


@dataclass(frozen=True)
class Decision:
    """What a launch does with one selected run."""

    run: Run
    action: str  # "submit"; "complete": nothing left to train; "running": its job is pending or running
    job: str | None = None  # the pending or running job's id


def submit_decisions(selected: Sequence[Run]) -> list[Decision]:
    """Per run: submit it, or skip it because it is complete or its training job is pending or running."""
    out: list[Decision] = []
    for run in selected:
        state, _ = run_state(run)
        if state == "complete":
            out.append(Decision(run, "complete"))
            continue
        active = job_active(run.path)
        if active:
            log.info("%s: job %s is still pending or running; not submitting again", run.name, active)
            out.append(Decision(run, "running", active))
            continue
        out.append(Decision(run, "submit"))
    return out


def train_plan_json(cfg: Config, rows: Sequence[RunPlan], decisions: Sequence[Decision], costs: CostPlan,
                    notes: Sequence[str], problems: Sequence[str]) -> dict[str, Any]:
    """``emt train --dry-run --json``: the plan table's rows (each with its ``action`` and, when
    running, its ``job``), their totals, the cost plan, notes and the problems a real launch
    would stop at: the numbers the human tables print, unrounded."""
    by_name = {d.run.name: d for d in decisions}
    runs = [{**run_plan_json(r), "action": by_name[r.run.name].action, "job": by_name[r.run.name].job}
            for r in rows]
    return {
        "kind": "train-plan", "config": str(cfg.source), "output_root": str(paths.output_root(cfg.cluster.output_root)),
        "model": cfg.model.name, "method": cfg.training.method, "runs": runs,
        "totals": dataclasses.asdict(plan_totals(cfg, rows)),
        "will_submit": [d.run.name for d in decisions if d.action == "submit"],
        "cost": cost_json(costs), "notes": list(notes), "problems": list(problems),
    }


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
        job = watch(run.name, submit_train(run, cfg.cluster, mode, gpu_slot=slot))
        if monitor:  # beside the training job, in its own process (debug mode: after it, in line)
            name = f"{run.name} monitor"
            monitors.append((name, watch(name, submit_monitor(run, cfg.cluster, mode, gpu_slot=slot))))
        return job

    items = [(run.name, lambda slot, run=run: start(run, slot)) for run in pending]
    # Ctrl-C / SIGTERM stop the local trainings and their monitors, also while the monitors finish.
    with stop_with_launcher(mode):
        results = run_queue(items, 1 if mode == "debug" else cfg.cluster.local_parallelism, mode,
                            jobs_per_item=2 if monitor else 1)
        return report_results({**results, **wait_all(monitors)})
