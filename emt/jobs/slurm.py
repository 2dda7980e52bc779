"""Submitting jobs: with :mod:`emt.jobs.entry` (what the jobs run), the only module that imports submitit.

Three modes behind one interface, so the same code path runs everywhere:

- ``slurm``: sbatch through submitit, resources from the cluster profile (one GPU per run by
  default; ``cluster.train.gpus: N`` gives a training job N tasks, one per GPU);
- ``local``: submitit's LocalExecutor, a child process per job on this machine;
- ``debug``: submitit's DebugExecutor, in this process (for a debugger).

Executors are built fresh for every submission because submitit's ``update_parameters`` is
cumulative. The training job is :class:`emt.jobs.entry.TrainJob`, a ``Checkpointable``: on preemption or
timeout submitit requeues it, and the requeued job resumes from the run's newest complete
checkpoint (training state lives on disk, never in the pickled job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import submitit

from emt.core import atomic, paths
from emt.core.config import ClusterConfig, JobResources, ServeSpec
from emt.core.records import record_submission
from emt.eval.plan import EvalTask
from emt.jobs.entry import ConsolidateJob, EvalJob, MonitorJob, ServeJob, TrainJob
from emt.sweep.runs import Run

log = logging.getLogger(__name__)
MODES = ("slurm", "local", "debug")


def sbatch_available() -> bool:
    """Whether this machine can submit to SLURM (``sbatch`` on the PATH)."""
    return shutil.which("sbatch") is not None


def local_gpu_count() -> int:
    """GPUs on this machine (nvidia-smi), without importing torch."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def make_executor(
    kind: str, cluster: ClusterConfig, mode: str, folder: Path, name: str, gpu_slot: int | None = None,
    resources: JobResources | None = None,
) -> submitit.Executor:
    """A fresh executor for one kind of job (``train``, ``eval``, ``consolidate``; or any kind
    with explicit ``resources``, e.g. a judge server's)."""
    res: JobResources = resources if resources is not None else getattr(cluster, kind)
    # Training runs one task per GPU (data-parallel); other jobs are one task.
    tasks = max(1, res.gpus) if kind == "train" else 1
    if mode == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cluster.max_requeues)
        params: dict[str, Any] = {
            "name": name, "timeout_min": res.time_min, "cpus_per_task": max(1, res.cpus // tasks),
            "mem_gb": res.mem_gb, "slurm_signal_delay_s": cluster.signal_delay_s,
        }
        if tasks > 1:
            params["tasks_per_node"] = tasks
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(cluster, key):
                params[f"slurm_{key}"] = getattr(cluster, key)
        if cluster.setup:
            params["slurm_setup"] = list(cluster.setup)
        ex.update_parameters(**params)
        return ex
    if mode == "local":
        drop_literal_folder(folder)  # left by an earlier local job that nothing waited for (a server)
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=cluster.max_requeues)
        params = {"timeout_min": res.time_min, "signal_delay_s": min(cluster.signal_delay_s, 60),
                  "tasks_per_node": tasks}
        # Without GPUs submitit would still export CUDA_VISIBLE_DEVICES; give each job its own.
        # On a machine without GPUs a multi-task training job runs its tasks on CPU (gloo).
        if res.gpus and gpu_slot is not None:
            n = max(local_gpu_count(), 1)
            params.update(gpus_per_node=tasks, visible_gpus=tuple((gpu_slot + i) % n for i in range(tasks)))
        else:
            params.update(gpus_per_node=0)
        ex.update_parameters(**params)
        return ex
    if mode == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def submit_train(run: Run, cluster: ClusterConfig, mode: str, gpu_slot: int | None = None) -> submitit.Job:
    """Submit one training run and record the submission in its run dir."""
    folder = paths.job_logs_dir(run.path)
    ex = make_executor("train", cluster, mode, folder, f"emt-train-{run.name}", gpu_slot)
    with _cancellable_children(mode):
        job = ex.submit(TrainJob(), run)
    record_submission(paths.submission_file(run.path), {
        "kind": "train", "mode": mode, "job_id": str(job.job_id), "run": run.name, "hash": run.hash,
        "log_folder": str(folder)})
    return job


def submit_monitor(run: Run, cluster: ClusterConfig, mode: str, gpu_slot: int | None = None) -> submitit.Job:
    """Submit the run's monitor job (eval resources, for as long as training may take) and add it
    to the run's training submission record, where launch/status.py finds it."""
    folder = paths.monitor_dir(run.path) / "logs" / "%j"
    res = dataclasses.replace(cluster.eval, time_min=max(cluster.eval.time_min, cluster.train.time_min))
    ex = make_executor("monitor", cluster, mode, folder, f"emt-monitor-{run.name}", gpu_slot, resources=res)
    with _cancellable_children(mode):
        job = ex.submit(MonitorJob(), run)
    sub = paths.submission_file(run.path)
    rec = json.loads(sub.read_text()) if sub.is_file() else {"kind": "train", "mode": mode, "run": run.name}
    rec.update(monitor_job_id=str(job.job_id), monitor_mode=mode, monitor_log_folder=str(folder))
    atomic.write_json(sub, rec)
    return job


def submit_eval_array(
    tasks: list[EvalTask], cluster: ClusterConfig, mode: str, folder: Path, name: str
) -> list[submitit.Job]:
    """One job array (``--array=0-N%P``), one task per shard, for SLURM; one job per task otherwise."""
    ex = make_executor("eval", cluster, mode, folder, name)
    if mode == "slurm":
        ex.update_parameters(slurm_array_parallelism=cluster.array_parallelism)
    with _cancellable_children(mode):
        return ex.map_array(EvalJob(), tasks)


def submit_consolidate(
    run: Run, eval_hash: str, cluster: ClusterConfig, mode: str, folder: Path, after: list[submitit.Job] | None = None,
    time_min: int | None = None,
) -> submitit.Job:
    """The consolidation job; on SLURM it starts only if every task of ``after`` succeeded (afterok).
    ``time_min``: a longer time limit than ``cluster.consolidate``'s (it waits for Batch API batches)."""
    res = dataclasses.replace(cluster.consolidate, time_min=max(cluster.consolidate.time_min, time_min or 0))
    ex = make_executor("consolidate", cluster, mode, folder, f"emt-consolidate-{run.name}", resources=res)
    if mode == "slurm" and after:
        # An array's tasks share one id before the underscore; afterok on it waits for all.
        array_ids = sorted({str(j.job_id).split("_")[0] for j in after})
        ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(array_ids),
                                                          "kill-on-invalid-dep": "yes"})
    with _cancellable_children(mode):
        return ex.submit(ConsolidateJob(), run, eval_hash)


def submit_serve(spec: ServeSpec, output_root: str, model_path: str, cluster: ClusterConfig, mode: str,
                 gpu_slot: int | None = None) -> submitit.Job:
    """Submit a judge server job (resources from the ``judge.servers`` entry) and record it in
    ``<output_root>/serve/<name>.submission.json``."""
    folder = paths.serve_logs_dir(output_root, spec.name)
    res = JobResources(time_min=spec.time_min, gpus=spec.gpus, cpus=spec.cpus, mem_gb=spec.mem_gb)
    ex = make_executor("serve", cluster, mode, folder, f"emt-serve-{spec.name}", gpu_slot, resources=res)
    with _detached_stdio(mode == "local"), _cancellable_children(mode):
        job = ex.submit(ServeJob(), spec, output_root, model_path)
    record_submission(paths.serve_submission_file(output_root, spec.name), {
        "kind": "serve", "mode": mode, "job_id": str(job.job_id), "name": spec.name, "model": spec.model,
        "log_folder": str(folder)})
    return job


def _no_op(signum: int, frame: Any) -> None:  # noqa: ARG001 - a signal handler's signature
    """SIGINT while a local job is being started by a process that ignores it: still ignored."""


@contextlib.contextmanager
def _cancellable_children(mode: str) -> Iterator[None]:
    """While starting a local job: a process that ignores SIGINT (a background job of a script,
    where the shell sets SIGINT to ignored) would pass that on to submitit's controller, and
    cancelling the job (submitit's LocalJob.cancel, ``emt serve --stop``: SIGINT to the
    controller) would then do nothing. A Python handler, unlike SIG_IGN, is reset to the default
    on exec, so a no-op handler for the length of the submission starts the job cancellable
    while this process keeps ignoring SIGINT."""
    if (mode != "local" or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
        yield
        return
    signal.signal(signal.SIGINT, _no_op)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _detached_stdio(active: bool) -> Iterator[None]:
    """While submitting a local job that outlives this process (a server): point fds 1 and 2
    at /dev/null, so submitit's controller process does not inherit this process's stdout and
    stderr. Otherwise a caller reading them through a pipe (`... | tee`, subprocess.run with
    capture_output) waits for the server to end. The job's own output goes to its log folder."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def job_log(job: submitit.Job) -> str:
    """Where a job's stderr is (for error messages)."""
    try:
        return str(job.paths.stderr)
    except Exception:  # noqa: BLE001 - only used to decorate messages
        return "?"


def wait_all(jobs: list[tuple[str, submitit.Job]]) -> dict[str, tuple[bool, Any]]:
    """Wait for jobs; per name (ok, result or error text naming the job's log)."""
    out: dict[str, tuple[bool, Any]] = {}
    for name, job in jobs:
        try:
            # results()[0]: a multi-task job's (rank 0's) result; the same as result() otherwise.
            out[name] = (True, job.results()[0])
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
            out[name] = (False, f"{type(exc).__name__}: see {job_log(job)}\n{str(exc)[-2000:]}")
        finally:
            drop_job_literal_folder(job)
    return out


def drop_literal_folder(folder: Path) -> None:
    """Remove the empty directory literally named by a log folder template (``logs/%j``).

    submitit's local controller creates its folder argument unformatted (``mkdir`` of
    ``.../logs/%j``) before writing every file under the job's real folder (``.../logs/<id>``),
    so each local job leaves an empty ``%j`` directory. Only an empty directory is removed
    (``rmdir``), so a template that names a real folder, or a concurrent job, loses nothing; a
    controller starting later may create it again, and the next call removes it."""
    folder = Path(folder)
    if "%" in folder.name:
        with contextlib.suppress(OSError):  # absent, or not empty: nothing of ours to remove
            folder.rmdir()


def drop_job_literal_folder(job: submitit.Job) -> None:
    """:func:`drop_literal_folder` for an ended job whose log folder is ``<dir>/%j`` (``<dir>/<job id>``)."""
    try:
        folder = Path(job.paths.folder)
    except Exception:  # noqa: BLE001 - cleanup only; a job without paths has no folder to tidy
        return
    if folder.name == str(job.job_id):
        drop_literal_folder(folder.parent / "%j")


def is_done(job: submitit.Job) -> bool:
    """Whether a job has ended (successfully or not)."""
    return bool(job.done())


def visible_slots(n_slots: int) -> list[int | None]:
    """GPU slot per local parallel job: round-robin over this machine's GPUs, None without."""
    n = local_gpu_count() if os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "" else 0
    return [i % n if n else None for i in range(n_slots)]
