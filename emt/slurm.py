"""Submitting jobs: the only module that imports submitit.

Three modes behind one interface, so the same code path runs everywhere:

- ``slurm``: sbatch through submitit, resources from the cluster profile (one GPU per run);
- ``local``: submitit's LocalExecutor, a child process per job on this machine;
- ``debug``: submitit's DebugExecutor, in this process (for a debugger).

Executors are built fresh for every submission because submitit's ``update_parameters`` is
cumulative. The training job is :class:`TrainJob`, a ``Checkpointable``: on preemption or
timeout submitit requeues it, and the requeued job resumes from the run's newest complete
checkpoint (training state lives on disk, never in the pickled job).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from emt import atomic, paths
from emt.config import ClusterConfig, JobResources

if TYPE_CHECKING:
    from emt.evaluate import EvalTask
    from emt.sweeps import Run

log = logging.getLogger(__name__)
MODES = ("slurm", "local", "debug")


class TrainJob(submitit.helpers.Checkpointable):
    """The callable a training job runs; requeued as-is on preemption (it resumes from disk)."""

    def __call__(self, run: "Run") -> dict[str, Any]:
        from emt.train import train_run

        return train_run(run)


class EvalJob(submitit.helpers.Checkpointable):
    """One eval array task; requeued as-is (it skips checkpoints whose results exist)."""

    def __call__(self, task: "EvalTask") -> dict[str, Any]:
        from emt.evaluate import run_eval_task

        return run_eval_task(task)


class ConsolidateJob(submitit.helpers.Checkpointable):
    """Consolidation of a run's results into scores.h5 (idempotent: it rewrites the file whole)."""

    def __call__(self, run: "Run", eval_hash: str) -> dict[str, Any]:
        from emt.evaluate import consolidate_run

        return consolidate_run(run, eval_hash)


def sbatch_available() -> bool:
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
    kind: str, cluster: ClusterConfig, mode: str, folder: Path, name: str, gpu_slot: int | None = None
) -> submitit.Executor:
    """A fresh executor for one kind of job (``train``, ``eval``, ``consolidate``)."""
    res: JobResources = getattr(cluster, kind)
    if mode == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cluster.max_requeues)
        params: dict[str, Any] = {
            "name": name, "timeout_min": res.time_min, "cpus_per_task": res.cpus, "mem_gb": res.mem_gb,
            "slurm_signal_delay_s": cluster.signal_delay_s,
        }
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
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=cluster.max_requeues)
        params = {"timeout_min": res.time_min, "signal_delay_s": min(cluster.signal_delay_s, 60)}
        # Without GPUs submitit would still export CUDA_VISIBLE_DEVICES; give each job its own.
        if res.gpus and gpu_slot is not None:
            params.update(gpus_per_node=1, visible_gpus=(gpu_slot,))
        else:
            params.update(gpus_per_node=0)
        ex.update_parameters(**params)
        return ex
    if mode == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


def submit_train(run: "Run", cluster: ClusterConfig, mode: str, gpu_slot: int | None = None) -> submitit.Job:
    """Submit one training run and record the submission in its run dir."""
    folder = paths.job_logs_dir(run.path)
    ex = make_executor("train", cluster, mode, folder, f"emt-train-{run.name}", gpu_slot)
    job = ex.submit(TrainJob(), run)
    atomic.write_json(paths.submission_file(run.path), {
        "kind": "train", "mode": mode, "job_id": str(job.job_id), "run": run.name, "hash": run.hash,
        "log_folder": str(folder),
        "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return job


def submit_eval_array(
    tasks: list["EvalTask"], cluster: ClusterConfig, mode: str, folder: Path, name: str
) -> list[submitit.Job]:
    """One job array (``--array=0-N%P``), one task per shard, for SLURM; one job per task otherwise."""
    ex = make_executor("eval", cluster, mode, folder, name)
    if mode == "slurm":
        ex.update_parameters(slurm_array_parallelism=cluster.array_parallelism)
    return ex.map_array(EvalJob(), tasks)


def submit_consolidate(
    run: "Run", eval_hash: str, cluster: ClusterConfig, mode: str, folder: Path, after: list[submitit.Job] | None = None
) -> submitit.Job:
    """The consolidation job; on SLURM it starts only if every task of ``after`` succeeded (afterok)."""
    ex = make_executor("consolidate", cluster, mode, folder, f"emt-consolidate-{run.name}")
    if mode == "slurm" and after:
        # An array's tasks share one id before the underscore; afterok on it waits for all.
        array_ids = sorted({str(j.job_id).split("_")[0] for j in after})
        ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(array_ids),
                                                          "kill-on-invalid-dep": "yes"})
    return ex.submit(ConsolidateJob(), run, eval_hash)


def record_submission(path: Path, record: dict[str, Any]) -> None:
    """Save a submission record (job ids, log folders) where later commands find it."""
    atomic.write_json(path, {**record, "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def job_active(run_dir: Path) -> str | None:
    """The job id of a run's training job if it is still pending or running, else None."""
    sub = paths.submission_file(run_dir)
    if not sub.is_file():
        return None
    import json

    rec = json.loads(sub.read_text())
    job_id, mode = str(rec.get("job_id")), rec.get("mode")
    if mode == "slurm" and shutil.which("squeue"):
        # squeue, not sacct: sacct lags a job's start by a second or more.
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            return None
        return job_id if out and out[0] in ACTIVE_STATES else None
    if mode == "local" and job_id.isdigit():
        return job_id if local_state(Path(rec["log_folder"].replace("%j", job_id)), job_id) == "RUNNING" else None
    return None


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
            out[name] = (True, job.result())
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
            out[name] = (False, f"{type(exc).__name__}: see {job_log(job)}\n{str(exc)[-2000:]}")
    return out


def is_done(job: submitit.Job) -> bool:
    return bool(job.done())


def visible_slots(n_slots: int) -> list[int | None]:
    """GPU slot per local parallel job: round-robin over this machine's GPUs, None without."""
    n = local_gpu_count() if os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "" else 0
    return [i % n if n else None for i in range(n_slots)]


# ----------------------------------------------------------------------------------------------
# Job states, for launch/status.py

ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM states by job id (array tasks as ``<array>_<task>``) from sacct; {} without SLURM."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    bases = sorted({str(j).split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", "JobID,State"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states: dict[str, str] = {}
    for line in out.splitlines():
        if "|" not in line:
            continue
        jid, state = line.split("|", 1)
        state = state.split()[0] if state.split() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        if "[" in jid:  # a pending array range such as 123_[2-5%2]
            base, rng = jid.split("_[", 1)
            lo_hi = rng.split("%")[0].rstrip("]")
            for part in lo_hi.split(","):
                lo, _, hi = part.partition("-")
                for k in range(int(lo), int(hi or lo) + 1):
                    states[f"{base}_{k}"] = state
        else:
            states[jid] = state
    return states


def local_state(folder: Path, job_id: str) -> str:
    """State of a local (LocalExecutor) job from its process and its result pickle."""
    stat = Path(f"/proc/{job_id}/stat")
    try:
        if stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return "RUNNING"
    except (OSError, IndexError):
        pass
    result = folder / f"{job_id}_0_result.pkl"
    if not result.is_file():
        return "UNKNOWN"
    import pickle

    try:
        with open(result, "rb") as fh:
            outcome = pickle.load(fh)[0]
    except Exception:  # noqa: BLE001 - a broken pickle only makes the state unknown
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


def log_file(log_folder: str, job_id: str) -> Path:
    """The stderr log submitit writes for a job; ``log_folder`` is the recorded folder template."""
    return Path(log_folder.replace("%j", job_id)) / f"{job_id}_0_log.err"
