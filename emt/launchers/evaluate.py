"""What launch/eval_array.py calls: score the checkpoints of runs (an eval array, then consolidation),
follow running trainings with a monitor job, or run one stage of the array inside a job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from emt.core import paths
from emt.core.config import Config, load_config
from emt.core.records import monitor_active, record_submission
from emt.eval.generate import checkpoint_problem
from emt.eval.judge import format_usage
from emt.eval.monitor import training_finished
from emt.eval.consolidate import consolidate_run, scores_up_to_date
from emt.eval.plan import (EvalTask, eval_hash, eval_root, load_traits, measured_costs, pending_steps, shard, size_array,
                           targets)
from emt.eval.task import harvest_run, run_eval_task
from emt.jobs.slurm import submit_consolidate, submit_eval_array, submit_monitor, wait_all
from emt.launchers.cost import CostPlan, RunWork, cost_json, cost_plan, measured_for_runs, render_costs
from emt.launchers.plan import JSON_NEEDS_DRY_RUN, EvalRunPlan
from emt.launchers.preflight import (PreflightError, dry_run_exit, eval_launch_problems, eval_preflight,
                                     monitor_traits, prepare_inputs, resolve_wait)
from emt.launchers.running import report_results, run_queue, sharing_cores, stop_with_launcher, submitting, watch
from emt.sweep.models import prepare_builtin_judges
from emt.sweep.runs import Run, build_sweep

# A run's planned eval: the checkpoint steps of each array task.
EvalPlan = list[tuple[Run, list[list[int]]]]


def print_usage(stats: Sequence[dict[str, Any]]) -> None:
    """Judge token usage and estimated cost, summed over a run's tasks."""
    total: dict[str, dict[str, Any]] = {}
    for st in stats:
        for judge, u in (st.get("usage") or {}).items():
            if judge not in total:  # the first task's numbers are the start of the sum, not added twice
                total[judge] = dict(u)
                continue
            acc = total[judge]
            for k, v in u.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(acc.get(k), (int, float)):
                    acc[k] += v
    for u in total.values():
        print("  " + format_usage(u))


def judge_errors(results: dict[str, tuple[bool, Any]]) -> list[str]:
    """The one-line judge errors (judge down or misconfigured, judgements lost, cache unusable)
    in failed tasks' error texts, each once: what to fix, under the tracebacks."""
    out: list[str] = []
    for ok, err in results.values():
        if ok or not isinstance(err, str):
            continue
        for line in err.splitlines():
            for kind in ("JudgeUnavailable: ", "JudgeIncomplete: ", "JudgeCacheError: "):
                if kind in line:
                    msg = line.split(kind, 1)[1].strip()
                    if msg not in out:
                        out.append(msg)
    return out


def damaged_checkpoints(run: Run, steps: Sequence[int]) -> list[str]:
    """One line per checkpoint of ``steps`` whose weights are damaged (a file cut short): reads
    only each weights file's header, so it costs milliseconds per checkpoint."""
    ckpts = dict(paths.complete_checkpoints(run.path))
    return [p for s in steps if s in ckpts and (p := checkpoint_problem(ckpts[s]))]


def _load_launch(config: str | Path, cluster: str | Path | None, overrides: Sequence[str],
                 run_names: Sequence[str] | None, seeds: Sequence[int] | None, mode: str,
                 dry_run: bool) -> tuple[Config, list[Run], list[str]]:
    """The config, the selected runs and the eval launch's problems (see :func:`eval_launch_problems`)."""
    cfg = load_config(config, overrides, cluster)
    root_ok = prepare_inputs(cfg, mode, dry_run)
    runs = build_sweep(cfg, "all", runs=list(run_names) if run_names else None, seeds=seeds)
    return cfg, runs, eval_launch_problems(cfg, mode, root_ok)


def eval_runs(
    config: str | Path,
    *,
    cluster: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_names: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    per_task: int | None = None,
    tasks: int | str | None = None,
    mode: str = "slurm",
    dry_run: bool = False,
    wait: bool | None = None,
    json_out: TextIO | None = None,
) -> int:
    """Score every checkpoint of the selected runs (all runs when ``run_names`` is None).

    Per run: one job array over the checkpoints without results (step 0 included), then one
    consolidation job that SLURM starts only after every task succeeded. Locally the tasks run
    (``cluster.local_parallelism`` at a time) and consolidation follows if they all succeeded.
    ``tasks="auto"`` sizes each run's array with :func:`emt.eval.plan.size_array` and prints why.
    ``json_out`` (with ``dry_run`` only): write the plan there as one JSON document
    (:func:`eval_plan_json`) instead of printing it.
    """
    if json_out is not None and not dry_run:
        raise ValueError(JSON_NEEDS_DRY_RUN)
    cfg, runs, problems = _load_launch(config, cluster, overrides, run_names, seeds, mode, dry_run)
    no_ckpt = [r.name for r in runs if not paths.complete_checkpoints(r.path)]
    if no_ckpt:
        problems.append(f"no complete checkpoints for {', '.join(no_ckpt)} (under {paths.runs_root(cfg.cluster.output_root)}): "
                        "train first (launch/train.py), with the same config and overrides")
    if problems and not dry_run:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    run_plans, sizing_problems = plan_eval(cfg, runs, ehash, no_ckpt, per_task, tasks)
    plan: EvalPlan = [(p.run, p.shards) for p in run_plans]
    if json_out is None:
        for line in (ln for p in run_plans for ln in p.lines(ehash)):
            print(line)
    problems += sizing_problems
    if sizing_problems and not dry_run:
        raise PreflightError(problems)
    costs = cost_plan(cfg, eval_work(cfg, plan, ehash), measured=measured_for_runs(cfg, runs))
    if json_out is not None:  # dry_run: checked above
        json_out.write(json.dumps(eval_plan_json(cfg, ehash, run_plans, costs, problems), indent=2) + "\n")
    else:
        print(render_costs(cfg, costs, what="this evaluation, the checkpoints still to score"))
    if dry_run:
        return dry_run_exit(problems)
    wait = resolve_wait(wait, mode)
    if any(shards for _, shards in plan):
        prepare_builtin_judges(cfg)
    failures = 0
    for run, shards in plan:
        if not shards and scores_up_to_date(run, ehash):
            print(f"{run.name}: {paths.scores_file(run.path)} is up to date; nothing to do")
            continue
        etasks = [EvalTask(run, tuple(steps), i, ehash) for i, steps in enumerate(shards)]
        if mode == "slurm":
            failures += submit_eval_slurm(cfg, run, ehash, etasks, wait)
        else:
            failures += run_eval_local(cfg, run, ehash, etasks, mode)
    return 1 if failures else 0


def eval_plan_json(cfg: Config, ehash: str, run_plans: Sequence[EvalRunPlan], costs: CostPlan,
                   problems: Sequence[str]) -> dict[str, Any]:
    """``emt eval --dry-run --json``: per run what is scored and the array tasks that score the rest,
    the cost plan, and the problems a real launch would stop at."""
    return {"kind": "eval-plan", "config": str(cfg.source), "output_root": str(paths.output_root(cfg.cluster.output_root)),
            "eval_hash": ehash, "runs": [p.to_json(ehash) for p in run_plans], "cost": cost_json(costs),
            "problems": list(problems)}


def eval_work(cfg: Config, plan: EvalPlan, ehash: str) -> list[RunWork]:
    """What the planned eval costs, per run: its checkpoints still to score, in its tasks, and
    whether step 0's task builds persona vectors (a trait with instruction pairs has none yet)."""
    build = bool(cfg.activations.layers and cfg.activations.persona)
    try:
        paired = [t.name for t in load_traits(cfg) if t.instructions]
    except Exception:  # noqa: BLE001 - the preflight reports bad traits; the cost plan says so itself
        paired = []
    out: list[RunWork] = []
    for run, shards in plan:
        steps = [s for sh in shards for s in sh]
        root = eval_root(run, ehash)
        persona = build and 0 in steps and any(not paths.persona_file(root, t).is_file() for t in paired)
        out.append(RunWork(run.name, len(steps), len(shards), persona))
    return out


def plan_eval(cfg: Config, runs: Sequence[Run], ehash: str, no_ckpt: Sequence[str], per_task: int | None,
              tasks: int | str | None) -> tuple[list[EvalRunPlan], list[str]]:
    """Each run's array tasks (the checkpoints still to score, sharded) with what is scored already;
    and the problems found while sizing (damaged checkpoints, an array that cannot fit)."""
    measured = measured_costs([eval_root(r, ehash) for r in runs]) if tasks == "auto" else None
    plan: list[EvalRunPlan] = []
    sizing_problems: list[str] = []
    for run in runs:
        todo = pending_steps(run, ehash) if run.name not in no_ckpt else []
        # Answers already generated and in Batch API batches: the consolidation job harvests them
        # (on CPU); an array task for them would hold a GPU to do nothing.
        waiting = [s for s in paths.judge_batch_steps(eval_root(run, ehash)) if s in set(todo)]
        todo = [s for s in todo if s not in waiting]
        n_targets = len(targets(run)) if run.name not in no_ckpt else 0
        # A damaged checkpoint to score fails here, named, rather than in a task after its queue wait.
        sizing_problems += damaged_checkpoints(run, todo)
        sizing_lines: tuple[str, ...] = ()
        if tasks == "auto":
            try:
                shards, sizing_lines = auto_shards(cfg, todo, ehash, measured)
            except ValueError as exc:
                sizing_problems.append(f"{run.name}: {exc}")
                plan.append(EvalRunPlan(run, n_targets, todo, [], fits=False, waiting=waiting))
                continue
        elif per_task or tasks:
            shards = shard(todo, per_task=per_task, tasks=int(tasks) if tasks else None)
        else:
            shards = shard(todo, per_task=cfg.eval.checkpoints_per_task)
        plan.append(EvalRunPlan(run, n_targets, todo, shards, sizing_lines, waiting=waiting))
    return plan, sizing_problems


def auto_shards(cfg: Config, todo: Sequence[int], ehash: str,
                measured: tuple[float, float, int] | None) -> tuple[list[list[int]], tuple[str, ...]]:
    """``--tasks auto``: shards of ``todo`` sized by :func:`size_array` from earlier tasks' timings
    (``measured``) or the configured estimates, and the lines explaining the arithmetic.
    Raises ValueError when no array fits."""
    cost, startup, source = cfg.eval.checkpoint_cost_s, cfg.eval.task_startup_s, \
        "eval.checkpoint_cost_s, eval.task_startup_s"
    if measured is not None:
        cost, startup = measured[0], measured[1]
        source = f"medians of {measured[2]} earlier task(s) of eval {ehash}"
    sizing = size_array(len(todo), cost, startup, cfg.cluster.array_parallelism,
                        cfg.cluster.eval.time_min, cfg.eval.time_budget, source)
    shards = shard(todo, tasks=sizing.tasks) if sizing.tasks else []
    return shards, sizing.lines


def harvest_minutes(cfg: Config) -> int | None:
    """The consolidation job's time limit when a judge scores through the Batch API (it waits for
    the batches the array's tasks submitted): ``judge.batch_harvest_min``; else None (its own)."""
    return cfg.judge.batch_harvest_min if any(j.batch for j in cfg.judge.judges) else None


def submit_eval_slurm(cfg: Config, run: Run, ehash: str, etasks: list[EvalTask], wait: bool) -> int:
    """Submit a run's eval array and its consolidation (afterok) to SLURM and record them;
    with ``wait``, wait for them. Returns 1 when a waited-for job failed, else 0."""
    mode = "slurm"
    folder = paths.eval_logs_dir(eval_root(run, ehash))
    jobs = submit_eval_array(etasks, cfg.cluster, mode, folder, f"emt-eval-{run.name}") if etasks else []
    cjob = submit_consolidate(run, ehash, cfg.cluster, mode, folder, after=jobs, time_min=harvest_minutes(cfg))
    record_submission(paths.eval_submission_file(run.path), {
        "kind": "eval", "mode": mode, "eval_hash": ehash, "array_job_ids": [str(j.job_id) for j in jobs],
        "consolidate_job_id": str(cjob.job_id), "log_folder": str(folder)})
    harvest = (f" (it first waits for the Batch API's judgements, up to {harvest_minutes(cfg)} min per try)"
               if harvest_minutes(cfg) else "")
    print(f"{run.name}: eval array {jobs[0].job_id.split('_')[0] if jobs else '-'} ({len(jobs)} tasks, "
          f"%{cfg.cluster.array_parallelism}), consolidation {cjob.job_id} after it{harvest}")
    if not wait:
        return 0
    return report_results(wait_all([(f"{run.name}[{j.job_id}]", j) for j in jobs] + [(f"{run.name} consolidate", cjob)]))


def run_eval_local(cfg: Config, run: Run, ehash: str, etasks: list[EvalTask], mode: str) -> int:
    """Run a run's eval tasks here (``cluster.local_parallelism`` at a time), then its
    consolidation if they all succeeded; records the jobs. Returns 1 when anything failed, else 0."""
    folder = paths.eval_logs_dir(eval_root(run, ehash))
    width = 1 if mode == "debug" else cfg.cluster.local_parallelism
    items = [(f"{run.name} task {t.task}", lambda slot, t=t: submit_eval_array([t], cfg.cluster, mode, folder,
                                                                             f"emt-eval-{run.name}")[0]) for t in etasks]
    started: dict[str, Any] = {}
    results = run_queue(items, width, mode, started)
    record = {"kind": "eval", "mode": mode, "eval_hash": ehash, "log_folder": str(folder),
              "array_job_ids": [str(j.job_id) for j in started.values()], "consolidate_job_id": None}
    record_submission(paths.eval_submission_file(run.path), record)
    bad = [k for k, (ok, _) in results.items() if not ok]
    gens = sum(r.get("generations", 0) for ok, r in results.values() if ok and isinstance(r, dict))
    calls = sum(r.get("judge_calls", 0) for ok, r in results.values() if ok and isinstance(r, dict))
    waiting = sum(len(r.get("batch_pending", [])) for ok, r in results.values() if ok and isinstance(r, dict))
    print(f"{run.name}: {len(etasks)} task(s), {gens} generations, {calls} judge calls"
          + (f", {waiting} checkpoint(s) submitted to the Batch API (consolidation harvests them)" if waiting else ""))
    print_usage([r for ok, r in results.values() if ok and isinstance(r, dict)])
    if bad:
        failures = report_results(results)
        print(f"{run.name}: not consolidated: {len(bad)} task(s) failed", file=sys.stderr)
        for line in judge_errors(results):
            print(f"{run.name}: {line}", file=sys.stderr)
        return failures
    res = run_queue([(f"{run.name} consolidate",
                      lambda slot: submit_consolidate(run, ehash, cfg.cluster, mode, folder,
                                                      time_min=harvest_minutes(cfg)))], 1, mode, started)
    record_submission(paths.eval_submission_file(run.path),
                      {**record, "consolidate_job_id": str(started[f"{run.name} consolidate"].job_id)})
    failures = report_results(res)
    for ok, r in res.values():
        if ok:
            got = f" ({len(r['harvested'])} harvested from the Batch API)" if r.get("harvested") else ""
            print(f"{run.name}: {r['checkpoints']} checkpoints -> {r['scores']}{got}")
    return failures


def follow_runs(
    config: str | Path,
    *,
    cluster: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_names: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    mode: str = "slurm",
    dry_run: bool = False,
    wait: bool | None = None,
    json_out: TextIO | None = None,
) -> int:
    """``launch/eval_array.py --follow``: a monitor job per selected run (:func:`emt.eval.monitor.follow`).

    For a run whose training is already running (or about to be): the monitor scores its
    checkpoints as they appear, detects onsets online and acts on alerts (``monitor.*``). A run
    whose monitor is already pending or running is skipped. Returns an exit code like
    :func:`eval_runs`. ``json_out`` (with ``dry_run`` only): write the plan there as one JSON
    document instead of printing it.
    """
    if json_out is not None and not dry_run:
        raise ValueError(JSON_NEEDS_DRY_RUN)
    cfg, runs, problems = _load_launch(config, cluster, overrides, run_names, seeds, mode, dry_run)
    traits = monitor_traits(cfg, problems)
    if problems and not dry_run:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    todo: list[Run] = []
    rows: list[dict[str, Any]] = []
    for run in runs:
        active = monitor_active(run.path)
        root = eval_root(run, ehash)
        scored = sum(1 for s in targets(run) if paths.result_file(root, s).is_file())
        state = ("training finished" if training_finished(run) else
                 "training" if paths.complete_checkpoints(run.path) else "no checkpoint yet")
        note = f"monitor job {active} is pending or running; not submitting another" if active else "will submit"
        rows.append({"name": run.name, "hash": run.hash, "dir": run.run_dir, "eval_dir": str(root), "state": state,
                     "scored": scored, "checkpoints": len(targets(run)), "action": "running" if active else "submit",
                     "monitor_job": active or None})
        if json_out is None:
            print(f"{run.name}: {state}; {scored} of {len(targets(run))} checkpoints scored (eval {ehash}); "
                  f"watching {', '.join(traits) or '-'} with {cfg.monitor.method}; {note}")
        if not active:
            todo.append(run)
    if json_out is not None:  # dry_run: checked above
        json_out.write(json.dumps({
            "kind": "follow-plan", "config": str(cfg.source), "eval_hash": ehash,
            "output_root": str(paths.output_root(cfg.cluster.output_root)), "traits": list(traits),
            "method": cfg.monitor.method, "runs": rows, "problems": list(problems)}, indent=2) + "\n")
    if dry_run:
        return dry_run_exit(problems)
    if not todo:
        return 0
    prepare_builtin_judges(cfg)
    wait = resolve_wait(wait, mode)
    jobs = []
    # Local monitors run all at once (sharing the cores) and end with the launcher (Ctrl-C, SIGTERM).
    with stop_with_launcher(mode), sharing_cores(mode, len(todo)):
        for run in todo:
            with submitting():
                job = watch(f"{run.name} monitor", submit_monitor(run, cfg.cluster, mode))
            jobs.append((f"{run.name} monitor", job))
            print(f"{run.name}: monitor job {job.job_id} (log: {paths.monitor_dir(run.path) / 'logs'})")
        return report_results(wait_all(jobs)) if wait else 0


def eval_in_job(
    config: str | Path,
    *,
    cluster: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_names: Sequence[str],
    seeds: Sequence[int] | None = None,
    task_index: int | None = None,
    tasks: int | str | None = None,
) -> int:
    """One stage of the eval array inside an existing job (the plain sbatch templates).

    With ``task_index``: shard ``task_index`` of ``tasks`` over all of the run's targets (fixed
    shards, so every array task agrees whatever has finished), evaluated in this process; done
    checkpoints are skipped. Without: consolidation of the run's results.
    """
    cfg = load_config(config, overrides, cluster)
    problems = eval_preflight(cfg, "in-job")
    if problems:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    for run in build_sweep(cfg, "all", runs=list(run_names), seeds=seeds):
        if task_index is None:
            harvest_run(run, ehash)  # checkpoints left to the Batch API by the array's tasks
            print(consolidate_run(run, ehash))
            continue
        if not isinstance(tasks, int) or not 0 <= task_index < tasks:
            raise PreflightError([f"--task-index {task_index} needs --tasks K (a number; every task of the array "
                                  f"must agree on K, so not auto) with 0 <= index < K"])
        shards = shard(targets(run), tasks=tasks)
        steps = shards[task_index] if task_index < len(shards) else []
        print(run_eval_task(EvalTask(run, tuple(steps), task_index, ehash)))
    return 0
