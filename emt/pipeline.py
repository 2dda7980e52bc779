"""What the launchers call: plan, check, and submit a sweep's training jobs.

Every input problem is found before the first job is submitted, and reported at once.
Relaunching submits only runs that are missing or incomplete and have no job pending or running.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from emt import paths
from emt.config import BUILTIN_DEBUG_DATA, BUILTIN_ORGANISM, BUILTIN_TINY_MODEL, Config, ConfigError, load_config
from emt.data import DataError, read_chat_jsonl
from emt.sweeps import Run, build_sweep, data_root, run_state

log = logging.getLogger(__name__)


class PreflightError(ConfigError):
    """Problems found before submitting; nothing was submitted."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(problems, header="Pre-flight checks failed; nothing was submitted")


def prepare_builtin_data(cfg: Config) -> None:
    """Write the builtin debug datasets when the config uses them (deterministic, idempotent)."""
    if cfg.data.root == BUILTIN_DEBUG_DATA:
        from emt.synth import write_debug_datasets

        write_debug_datasets(data_root(cfg), n_per_file=cfg.data.debug_examples_per_file, seed=cfg.data.split_seed)
    elif cfg.data.root == BUILTIN_ORGANISM:
        from emt.organism import write_organism_datasets

        write_organism_datasets(data_root(cfg), n_per_file=cfg.data.debug_examples_per_file, seed=cfg.data.split_seed)


def scheduler_problems(mode: str, local_hint: str = "run on this machine") -> list[str]:
    """The launch's scheduler problem, if any: SLURM mode needs ``sbatch`` on this machine.

    Shared by every launcher (train, eval, judge serve) and asked for the launch mode, not
    whether it is a dry run: a dry run must report what would stop the real launch, not plan
    jobs that could never be submitted.
    """
    from emt.slurm import sbatch_available

    if mode == "slurm" and not sbatch_available():
        return [f"sbatch not found: run from a SLURM login node, or pass --local to {local_hint}"]
    return []


def prepare_inputs(cfg: Config, mode: str, dry_run: bool) -> bool:
    """Check the output root, then write the builtin debug data under it; True when it is usable.

    The root comes first: an unwritable one is a single line naming ``cluster.output_root``
    rather than a traceback from the data writer. A real launch raises :class:`PreflightError`
    there (with the scheduler's problem, so both are seen at once); a dry run writes nothing and
    leaves the root's problem to the pre-flight report.
    """
    problems = _check_output_root(cfg, create=not dry_run)
    if problems:
        if not dry_run:
            raise PreflightError(problems + scheduler_problems(mode))
        return False
    prepare_builtin_data(cfg)
    return True


def preflight(cfg: Config, runs: Sequence[Run], mode: str, dry_run: bool = False) -> list[str]:
    """Every reason the sweep cannot run, without submitting or training anything.

    ``mode`` is the launch mode (slurm, local, debug); ``dry_run`` checks without creating
    anything (``mode="dry-run"`` is the same as ``dry_run=True`` without a scheduler check).
    """
    dry_run = dry_run or mode == "dry-run"
    problems = scheduler_problems(mode)
    root_problems = _check_output_root(cfg, create=not dry_run)
    seen: set[str] = set()
    for run in runs:
        if run.data_file in seen:
            continue
        seen.add(run.data_file)
        if root_problems and cfg.data.root in (BUILTIN_DEBUG_DATA, BUILTIN_ORGANISM):
            break  # the builtin data is written under the output root: its problem says it all
        if not Path(run.data_file).is_file():
            problems.append(
                f"{run.data_file}: data file not found (run {run.name}; data.root={cfg.data.root}, "
                f"data.levels[{run.level}]={cfg.data.levels[run.level]}): put the file there or set data.root=DIR"
            )
            continue
        try:
            read_chat_jsonl(run.data_file)
        except DataError as exc:
            problems.extend(exc.problems)
    problems += root_problems
    name = cfg.model.name
    if name != BUILTIN_TINY_MODEL and (name.startswith((".", "/", "~")) or Path(name).expanduser().exists()):
        if not (Path(name).expanduser() / "config.json").is_file():
            problems.append(f"model.name={name}: no config.json there (a local model needs save_pretrained files)")
    if cfg.training.deepspeed:
        from emt.dsconfig import problems as deepspeed_problems

        problems += deepspeed_problems(cfg.training)  # the file may have changed since load_config
        import importlib.util

        # Checked here, not on the GPU node after hours in the queue (found, not imported: an
        # import costs seconds and probes for accelerators on a login node).
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(f"training.deepspeed={cfg.training.deepspeed}: DeepSpeed is not installed in this "
                            f"environment (pip install -e '.[deepspeed]'), or unset training.deepspeed")
    return problems


def _check_output_root(cfg: Config, create: bool) -> list[str]:
    """The output root must be writable; a dry run checks without creating anything."""
    raw = cfg.cluster.output_root
    if "$" in os.path.expandvars(raw):
        return [f"cluster.output_root={raw}: uses an environment variable that is not set here"]
    root = paths.output_root(raw)
    if not create:
        probe_dir = root
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            return [f"cluster.output_root={raw}: {probe_dir} is a file, not a directory; set cluster.output_root"]
        if not os.access(probe_dir, os.W_OK):
            return [f"cluster.output_root={raw}: {probe_dir} is not writable; set cluster.output_root"]
        return []
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [f"cluster.output_root={raw}: not writable ({exc.strerror}); "
                "set cluster.output_root to a directory on the shared filesystem"]
    return []


def prepare_builtin_model(cfg: Config) -> None:
    """Build the tiny model once, before jobs start (jobs would otherwise race to build it)."""
    if cfg.model.name == BUILTIN_TINY_MODEL:
        from emt.tiny import build_tiny_model
        from emt.train import model_path

        build_tiny_model(Path(model_path(cfg)), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)
    elif cfg.model.name == BUILTIN_ORGANISM:
        from emt.organism import build_organism
        from emt.train import model_path

        build_organism(Path(model_path(cfg)), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)


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

    ``monitor=True`` submits a monitor job beside each training job (:func:`emt.monitor.follow`):
    it scores checkpoints while training runs and acts on alerts (``monitor.*`` in the config).

    Returns a process exit code: 0 when everything selected is complete or submitted (and, when
    waiting, finished), 1 when a job failed, 2 when a dry run found problems. Input problems
    raise :class:`ConfigError` / :class:`PreflightError` before anything is submitted.
    """
    from emt.plan import format_plan, plan_runs
    from emt.slurm import job_active

    cfg = load_config(config, overrides, cluster)
    prepare_inputs(cfg, mode, dry_run)
    selected = build_sweep(cfg, sweep, runs, seeds)
    problems = preflight(cfg, selected, mode, dry_run=dry_run)

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

    print(format_plan(cfg, plan_runs(cfg, selected), [r.name for r in pending]))
    if sweep == "schedules":
        from emt.sweeps import schedule_optimizers

        for note in schedule_optimizers(cfg)[1]:
            print(f"note: {note}")
    if dry_run:
        if problems:
            print("\nProblems that would stop this launch:\n" + "\n".join(f"  - {p}" for p in problems))
            return 2
        return 0
    if problems:
        raise PreflightError(problems)
    if not pending:
        print("Nothing to submit: every selected run is complete or already running.")
        return 0
    prepare_builtin_model(cfg)
    if wait is None:
        wait = mode != "slurm"
    if monitor:
        from emt.evaluate import prepare_builtin_judges
        from emt.monitor import watched_traits

        watched_traits(cfg)  # a bad monitor.traits fails before anything is submitted
        prepare_builtin_judges(cfg)
    return _submit(cfg, pending, mode, wait, monitor)


def _submit(cfg: Config, pending: Sequence[Run], mode: str, wait: bool, monitor: bool = False) -> int:
    """Submit training jobs (at most ``cluster.local_parallelism`` at a time locally), each with its
    monitor job when ``monitor``; optionally wait."""
    from emt.slurm import submit_monitor, submit_train, wait_all

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
        return _report({**wait_all(jobs), **wait_all(monitors)}) if wait else 0

    def start(run: Run, slot: int | None) -> Any:
        job = submit_train(run, cfg.cluster, mode, gpu_slot=slot)
        if monitor:  # beside the training job, in its own process (debug mode: after it, in line)
            monitors.append((f"{run.name} monitor", submit_monitor(run, cfg.cluster, mode, gpu_slot=slot)))
        return job

    items = [(run.name, lambda slot, run=run: start(run, slot)) for run in pending]
    results = run_queue(items, 1 if mode == "debug" else cfg.cluster.local_parallelism, mode)
    return _report({**results, **wait_all(monitors)})


def run_queue(items: Sequence[tuple[str, Callable[[int | None], Any]]], width: int, mode: str,
              started: dict[str, Any] | None = None) -> dict[str, tuple[bool, Any]]:
    """Run local/debug jobs ``width`` at a time (a LocalExecutor would start them all at once).

    Each item is (name, submit(gpu_slot) -> job); returns per name (ok, result or error text).
    ``started`` (if given) receives each job by name as it starts.
    """
    from emt.slurm import visible_slots, wait_all

    slots = visible_slots(width)
    queue = list(items)
    running: dict[int, tuple[str, Any]] = {}
    results: dict[str, tuple[bool, Any]] = {}
    total, t0 = len(queue), time.time()
    while queue or running:
        for slot in range(width):
            if slot not in running and queue:
                name, submit = queue.pop(0)
                job = submit(slots[slot])
                running[slot] = (name, job)
                if started is not None:
                    started[name] = job
                log.info("started %s (%s job %s)", name, mode, job.job_id)
        for slot, (name, job) in list(running.items()):
            if mode == "debug" or job.done():
                results.update(wait_all([(name, job)]))
                del running[slot]
                log.info("%s %s [%d/%d, %.0f s]", name, "finished" if results[name][0] else "FAILED",
                         len(results), total, time.time() - t0)
        if running:
            time.sleep(0.5)
    return results


def _report(results: dict[str, tuple[bool, Any]]) -> int:
    failed = {k: v for k, (ok, v) in results.items() if not ok}
    for name, (ok, res) in results.items():
        if ok and isinstance(res, dict) and "status" in res:
            n = len(res["checkpoints"]) if isinstance(res.get("checkpoints"), list) else "?"
            print(f"{name}: {res.get('status')} ({n} checkpoints)")
    for name, err in failed.items():
        print(f"{name}: FAILED\n{err}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# Evaluation


def _print_usage(stats: Sequence[dict[str, Any]]) -> None:
    """Judge token usage and estimated cost, summed over a run's tasks."""
    from emt.judge import format_usage

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


def _judge_errors(results: dict[str, tuple[bool, Any]]) -> list[str]:
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
    from emt.generate import checkpoint_problem

    ckpts = dict(paths.complete_checkpoints(run.path))
    return [p for s in steps if s in ckpts and (p := checkpoint_problem(ckpts[s]))]


def eval_preflight(cfg: Config, mode: str) -> list[str]:
    """Problems that stop an eval launch: traits, judge credentials, the scheduler."""
    from emt.evaluate import judge_key_envs, judge_needs_key, load_traits

    problems: list[str] = scheduler_problems(mode)
    try:
        load_traits(cfg)
    except ValueError as exc:
        problems.append(f"eval.traits: {exc}")
    if judge_needs_key(cfg.judge.judges) and not os.environ.get("OPENAI_API_KEY"):
        problems.append("judge: an openai judge without base_url needs OPENAI_API_KEY in the environment "
                        "(export OPENAI_API_KEY=...; jobs read it from their environment, it is never written "
                        "to configs or logs), or point judge.judges[].base_url at an OpenAI-compatible server")
    for label, var in judge_key_envs(cfg.judge.judges):
        if var != "OPENAI_API_KEY" and not os.environ.get(var):
            problems.append(f"judge {label}: api_key_env {var} is not set in the environment (export {var}=...; "
                            f"jobs read it from their environment, it is never written anywhere)")
    if mode != "in-job":  # inside a job the tasks wait for the server (judge.serve_wait_s)
        problems += serve_preflight(cfg)
    return problems


def serve_preflight(cfg: Config) -> list[str]:
    """Every ``serve:<name>`` judge needs its server up, or its serve job queued (the eval tasks
    then wait up to judge.serve_wait_s for it)."""
    from emt.evaluate import SERVE_PREFIX
    from emt.serve import endpoint_state

    problems: list[str] = []
    for spec in cfg.judge.judges:
        url = spec.base_url or ""
        if not url.startswith(SERVE_PREFIX):
            continue
        name = url[len(SERVE_PREFIX):]
        state, detail = endpoint_state(cfg.cluster.output_root, name)
        if state in ("healthy", "starting"):
            continue
        problems.append(f"judge {spec.label}: base_url {url}: {detail}; start the server first: "
                        f"python launch/judge_serve.py --config {cfg.source or 'CONFIG'} --name {name}")
    return problems


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
) -> int:
    """Score every checkpoint of the selected runs (all runs when ``run_names`` is None).

    Per run: one job array over the checkpoints without results (step 0 included), then one
    consolidation job that SLURM starts only after every task succeeded. Locally the tasks run
    (``cluster.local_parallelism`` at a time) and consolidation follows if they all succeeded.
    ``tasks="auto"`` sizes each run's array with :func:`emt.evaluate.size_array` and prints why.
    """
    from emt.evaluate import (EvalTask, eval_hash, eval_root, measured_costs, pending_steps, prepare_builtin_judges,
                              scores_up_to_date, shard, size_array, targets)
    from emt.slurm import record_submission, submit_consolidate, submit_eval_array, wait_all

    cfg = load_config(config, overrides, cluster)
    root_ok = prepare_inputs(cfg, mode, dry_run)
    runs = build_sweep(cfg, "all", runs=list(run_names) if run_names else None, seeds=seeds)
    problems = eval_preflight(cfg, mode)  # the real mode in a dry run too: it reports a missing sbatch
    if not root_ok:
        problems += _check_output_root(cfg, create=False)
    no_ckpt = [r.name for r in runs if not paths.complete_checkpoints(r.path)]
    if no_ckpt:
        problems.append(f"no complete checkpoints for {', '.join(no_ckpt)} (under {paths.runs_root(cfg.cluster.output_root)}): "
                        "train first (launch/train.py), with the same config and overrides")
    if problems and not dry_run:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    measured = measured_costs([eval_root(r, ehash) for r in runs]) if tasks == "auto" else None
    plan: list[tuple[Run, list[list[int]]]] = []
    sizing_problems: list[str] = []
    for run in runs:
        todo = pending_steps(run, ehash) if run.name not in no_ckpt else []
        # A damaged checkpoint to score fails here, named, rather than in a task after its queue wait.
        sizing_problems += damaged_checkpoints(run, todo)
        sizing_lines: tuple[str, ...] = ()
        if tasks == "auto":
            cost, startup, source = cfg.eval.checkpoint_cost_s, cfg.eval.task_startup_s, \
                "eval.checkpoint_cost_s, eval.task_startup_s"
            if measured is not None:
                cost, startup = measured[0], measured[1]
                source = f"medians of {measured[2]} earlier task(s) of eval {ehash}"
            try:
                sizing = size_array(len(todo), cost, startup, cfg.cluster.array_parallelism,
                                    cfg.cluster.eval.time_min, cfg.eval.time_budget, source)
            except ValueError as exc:
                sizing_problems.append(f"{run.name}: {exc}")
                plan.append((run, []))
                continue
            shards = shard(todo, tasks=sizing.tasks) if sizing.tasks else []
            sizing_lines = sizing.lines
        elif per_task or tasks:
            shards = shard(todo, per_task=per_task, tasks=int(tasks) if tasks else None)
        else:
            shards = shard(todo, per_task=cfg.eval.checkpoints_per_task)
        plan.append((run, shards))
        scored = len(targets(run)) - len(todo) if run.name not in no_ckpt else 0
        print(f"{run.name}: {scored} of {len(targets(run)) if run.name not in no_ckpt else 0} checkpoints scored "
              f"(eval {ehash}); {len(todo)} to score in {len(shards)} task(s)")
        for line in sizing_lines:
            print(f"  --tasks auto: {line}")
    problems += sizing_problems
    if sizing_problems and not dry_run:
        raise PreflightError(problems)
    if dry_run:
        if problems:
            print("\nProblems that would stop this launch:\n" + "\n".join(f"  - {p}" for p in problems))
            return 2
        return 0
    if wait is None:
        wait = mode != "slurm"
    if any(shards for _, shards in plan):
        prepare_builtin_judges(cfg)

    failures = 0
    for run, shards in plan:
        root = eval_root(run, ehash)
        if not shards and scores_up_to_date(run, ehash):
            print(f"{run.name}: {paths.scores_file(run.path)} is up to date; nothing to do")
            continue
        folder = paths.eval_logs_dir(root)
        etasks = [EvalTask(run, tuple(steps), i, ehash) for i, steps in enumerate(shards)]
        if mode == "slurm":
            jobs = submit_eval_array(etasks, cfg.cluster, mode, folder, f"emt-eval-{run.name}") if etasks else []
            cjob = submit_consolidate(run, ehash, cfg.cluster, mode, folder, after=jobs)
            record_submission(paths.eval_submission_file(run.path), {
                "kind": "eval", "mode": mode, "eval_hash": ehash, "array_job_ids": [str(j.job_id) for j in jobs],
                "consolidate_job_id": str(cjob.job_id), "log_folder": str(folder)})
            print(f"{run.name}: eval array {jobs[0].job_id.split('_')[0] if jobs else '-'} ({len(jobs)} tasks, "
                  f"%{cfg.cluster.array_parallelism}), consolidation {cjob.job_id} after it")
            if wait:
                failures += _report(wait_all([(f"{run.name}[{j.job_id}]", j) for j in jobs] + [(f"{run.name} consolidate", cjob)]))
            continue
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
        print(f"{run.name}: {len(etasks)} task(s), {gens} generations, {calls} judge calls")
        _print_usage([r for ok, r in results.values() if ok and isinstance(r, dict)])
        if bad:
            failures += _report(results)
            print(f"{run.name}: not consolidated: {len(bad)} task(s) failed", file=sys.stderr)
            for line in _judge_errors(results):
                print(f"{run.name}: {line}", file=sys.stderr)
            continue
        res = run_queue([(f"{run.name} consolidate",
                          lambda slot: submit_consolidate(run, ehash, cfg.cluster, mode, folder))], 1, mode, started)
        record_submission(paths.eval_submission_file(run.path),
                          {**record, "consolidate_job_id": str(started[f"{run.name} consolidate"].job_id)})
        failures += _report(res)
        for ok, r in res.values():
            if ok:
                print(f"{run.name}: {r['checkpoints']} checkpoints -> {r['scores']}")
    return 1 if failures else 0


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
) -> int:
    """``launch/eval_array.py --follow``: a monitor job per selected run (:func:`emt.monitor.follow`).

    For a run whose training is already running (or about to be): the monitor scores its
    checkpoints as they appear, detects onsets online and acts on alerts (``monitor.*``). A run
    whose monitor is already pending or running is skipped. Returns an exit code like
    :func:`eval_runs`.
    """
    from emt.evaluate import eval_hash, eval_root, prepare_builtin_judges, targets
    from emt.monitor import training_finished, watched_traits
    from emt.slurm import monitor_active, submit_monitor, wait_all

    cfg = load_config(config, overrides, cluster)
    root_ok = prepare_inputs(cfg, mode, dry_run)
    runs = build_sweep(cfg, "all", runs=list(run_names) if run_names else None, seeds=seeds)
    problems = eval_preflight(cfg, mode)  # the real mode in a dry run too: it reports a missing sbatch
    if not root_ok:
        problems += _check_output_root(cfg, create=False)
    try:
        traits = watched_traits(cfg)
    except ValueError as exc:
        problems.append(str(exc))
        traits = []
    if problems and not dry_run:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    todo: list[Run] = []
    for run in runs:
        active = monitor_active(run.path)
        root = eval_root(run, ehash)
        scored = sum(1 for s in targets(run) if paths.result_file(root, s).is_file())
        state = ("training finished" if training_finished(run) else
                 "training" if paths.complete_checkpoints(run.path) else "no checkpoint yet")
        note = f"monitor job {active} is pending or running; not submitting another" if active else "will submit"
        print(f"{run.name}: {state}; {scored} of {len(targets(run))} checkpoints scored (eval {ehash}); "
              f"watching {', '.join(traits) or '-'} with {cfg.monitor.method}; {note}")
        if not active:
            todo.append(run)
    if dry_run:
        if problems:
            print("\nProblems that would stop this launch:\n" + "\n".join(f"  - {p}" for p in problems))
            return 2
        return 0
    if not todo:
        return 0
    prepare_builtin_judges(cfg)
    if wait is None:
        wait = mode != "slurm"
    jobs = []
    for run in todo:
        job = submit_monitor(run, cfg.cluster, mode)
        jobs.append((f"{run.name} monitor", job))
        print(f"{run.name}: monitor job {job.job_id} (log: {paths.monitor_dir(run.path) / 'logs'})")
    return _report(wait_all(jobs)) if wait else 0


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
    from emt.evaluate import EvalTask, consolidate_run, eval_hash, run_eval_task, shard, targets

    cfg = load_config(config, overrides, cluster)
    problems = eval_preflight(cfg, "in-job")
    if problems:
        raise PreflightError(problems)
    ehash = eval_hash(cfg)
    for run in build_sweep(cfg, "all", runs=list(run_names), seeds=seeds):
        if task_index is None:
            print(consolidate_run(run, ehash))
            continue
        if not isinstance(tasks, int) or not 0 <= task_index < tasks:
            raise PreflightError([f"--task-index {task_index} needs --tasks K (a number; every task of the array "
                                  f"must agree on K, so not auto) with 0 <= index < K"])
        shards = shard(targets(run), tasks=tasks)
        steps = shards[task_index] if task_index < len(shards) else []
        print(run_eval_task(EvalTask(run, tuple(steps), task_index, ehash)))
    return 0
