"""What a job knows about the machine it landed on."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

log = logging.getLogger(__name__)


# Set by a launcher for the local jobs it starts (emt.launchers.running.sharing_cores): how many
# run at once on this machine. They share its cores; SLURM jobs get their own cpus instead.
LOCAL_JOBS_ENV = "EMT_LOCAL_JOBS"

_logged: int | None = None  # the thread count last logged, once per job (process)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a taskset or cgroup cpuset narrows
    it), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_threads(cpus: int, jobs: int, cores: int) -> int:
    """Threads for one of ``jobs`` local jobs running at once on ``cores`` cores that asks for
    ``cpus``: its share of the cores, never more than it asked for, at least 1.

    submitit's local executor starts every job as a plain child process with no CPU limit, so
    ``cluster.local_parallelism`` jobs at once each taking ``cpus`` threads oversubscribe a small
    machine (2 jobs x 2 threads on 2 cores: eval 20-90 s per checkpoint instead of ~1 s).
    """
    return max(1, min(cpus, max(1, cores // max(1, jobs))))


def local_jobs_at_once() -> int:
    """How many local jobs the launcher runs at once (``EMT_LOCAL_JOBS``); 1 when unset.
    A value that is not a positive integer raises ValueError naming the variable."""
    raw = os.environ.get(LOCAL_JOBS_ENV, "1")
    try:
        jobs = int(raw)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"{LOCAL_JOBS_ENV}={raw!r}: expected a positive integer (the local jobs running at "
                         f"once; emt's launchers set it), or unset it")
    return jobs


def cpu_threads(default: int) -> int:
    """CPU threads for torch in a job: SLURM's allocation (else ``default``), never more than the
    cores this process may use. Oversubscribing is costly: on a busy 2-core machine, torch with
    more threads than free cores was measured 6-30x slower. A local job (no SLURM allocation)
    started beside others (``EMT_LOCAL_JOBS``) gets its share: :func:`local_threads`.
    Logged once per job (again only if the count changes)."""
    global _logged
    have = usable_cores()
    if "SLURM_CPUS_PER_TASK" in os.environ:
        want, jobs = int(os.environ["SLURM_CPUS_PER_TASK"]), 1
        why = f"SLURM_CPUS_PER_TASK={want}, {have} usable cores"
    else:
        want, jobs = default, local_jobs_at_once()
        why = f"cpus {default}, {jobs} local job(s) at once on {have} usable cores"
    threads = local_threads(want, jobs, have)
    if _logged != threads:
        _logged = threads
        log.info("CPU threads for this job: %d (%s)", threads, why)
    return threads


def limit_torch_threads(default: int) -> None:
    """Apply :func:`cpu_threads` to torch when the job computes on CPU."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(default))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; the caller binds it a moment later).
    A wildcard address (``0.0.0.0``, ``::``, "") probes all interfaces."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "", 0))
        return int(s.getsockname()[1])
