"""Submission records and the scheduler's view of their jobs, without the submission layer.

A launcher records every job it submits in a small JSON file (``submission.json`` in a run's
directory, ``serve/<name>.submission.json`` for a judge server, ...). Eval tasks, the status table
and the launchers read those records back here, and ask the scheduler (``squeue``, ``sacct``, or
a local job's process and result pickle) whether the jobs they name are still alive: none of
that needs submitit, so none of it imports :mod:`emt.jobs`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from emt.core import atomic, paths

ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def record_submission(path: Path, record: dict[str, Any]) -> None:
    """Save a submission record (job ids, log folders) where later commands find it."""
    atomic.write_json(path, {**record, "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def job_active(run_dir: Path) -> str | None:
    """The job id of a run's training job if it is still pending or running, else None."""
    return submission_active(paths.submission_file(run_dir))


def monitor_active(run_dir: Path) -> str | None:
    """The job id of a run's monitor job if it is still pending or running, else None."""
    return submission_active(paths.submission_file(run_dir), "monitor_")


def submission_active(sub: Path, prefix: str = "") -> str | None:
    """The job id a submission record (``job_id``, ``mode``, ``log_folder``; with ``prefix``
    "monitor_", the monitor job's ``monitor_job_id`` ...) names, if that job is still pending or
    running; else None."""
    if not sub.is_file():
        return None
    try:
        rec = json.loads(sub.read_text())
    except (OSError, ValueError):
        return None
    if rec.get(f"{prefix}job_id") is None:
        return None
    job_id, mode = str(rec.get(f"{prefix}job_id")), rec.get(f"{prefix}mode", rec.get("mode"))
    if mode == "slurm" and shutil.which("squeue"):
        # squeue, not sacct: sacct lags a job's start by a second or more.
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            return None
        return job_id if out and out[0] in ACTIVE_STATES else None
    if mode == "local" and job_id.isdigit():
        folder = str(rec[f"{prefix}log_folder"]).replace("%j", job_id)
        return job_id if local_state(Path(folder), job_id) == "RUNNING" else None
    return None


def cancel_job(record_path: Path) -> str | None:
    """Cancel the job a submission record names, if it is still active; returns its id."""
    job_id = submission_active(record_path)
    if job_id is None:
        return None
    rec = json.loads(record_path.read_text())
    if rec.get("mode") == "slurm":
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
    else:  # a LocalExecutor job: SIGINT, as submitit's own LocalJob.cancel sends
        try:
            os.kill(int(job_id), signal.SIGINT)
        except (ValueError, ProcessLookupError, PermissionError):
            return None
    return job_id


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
    try:
        with open(result, "rb") as fh:
            outcome = pickle.load(fh)[0]
    except Exception:  # noqa: BLE001 - a broken pickle only makes the state unknown
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


def log_file(log_folder: str, job_id: str) -> Path:
    """The stderr log submitit writes for a job; ``log_folder`` is the recorded folder template."""
    return Path(log_folder.replace("%j", job_id)) / f"{job_id}_0_log.err"
