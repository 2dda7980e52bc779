"""Running submitted jobs to the end: local jobs a few at a time, and the summary of how they ended.

Local jobs (``--local``: submitit child processes) end with the launcher that waits on them: while
a launcher waits (:func:`stop_with_launcher`), SIGINT (Ctrl-C) and SIGTERM cancel every local job
it started, wait (bounded) for their processes to end, and exit 130 / 143. Results already
written stay (every write is atomic) and a rerun skips finished work. SLURM jobs are never
cancelled here: they are meant to outlive the launcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from emt.core.runtime import LOCAL_JOBS_ENV
from emt.jobs.slurm import visible_slots, wait_all

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long cancelled jobs get to end on their own (submitit's controller interrupts its tasks and
# kills them 1 s later), then how long after SIGKILL to the survivors before giving up waiting.
CANCEL_GRACE_S = 30.0
KILL_WAIT_S = 10.0


class LauncherStopped(BaseException):
    """Raised in the launcher's main thread by SIGINT/SIGTERM while it waits on local jobs.
    A BaseException, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclasses.dataclass
class _Watch:
    """The process's one watch over its local jobs (signal handlers are per process)."""

    depth: int = 0  # nested stop_with_launcher blocks
    local: bool = False  # whether the outermost block waits on local jobs
    jobs: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    previous: dict[int, Any] = dataclasses.field(default_factory=dict)
    pending: int | None = None  # a signal that arrived while a job was being submitted
    critical: int = 0  # > 0 while submitting: the signal waits until the job is registered
    stopping: bool = False  # cancelling: further signals must not interrupt the cleanup


_WATCH = _Watch()


def _on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    if _WATCH.stopping:
        return
    _WATCH.pending = signum
    if not _WATCH.critical:
        raise LauncherStopped(signum)


@contextlib.contextmanager
def stop_with_launcher(mode: str) -> Iterator[None]:
    """While the block runs, local jobs registered with :func:`watch` end with the launcher:
    SIGINT/SIGTERM cancel them (:func:`cancel_local_jobs`) and exit 130 / 143 (128 + signal).

    Nested blocks share one registry; the outermost installs and restores the handlers. Other
    modes change nothing (SLURM jobs outlive the launcher; debug jobs run in this process, where
    Ctrl-C already stops them). A signal the launcher was started ignoring (``nohup``, a
    background job of a non-interactive shell) stays ignored.
    """
    outer = _WATCH.depth == 0
    if outer:
        _WATCH.local = mode == "local" and threading.current_thread() is threading.main_thread()
        _WATCH.jobs, _WATCH.pending, _WATCH.stopping, _WATCH.critical = [], None, False, 0
    _WATCH.depth += 1  # before the handlers go in: a signal from then on is handled below
    try:
        if outer and _WATCH.local:
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    _WATCH.previous[sig] = signal.signal(sig, _on_signal)
        yield
    except LauncherStopped as stop:
        _WATCH.stopping = True
        cancel_local_jobs(_WATCH.jobs)
        raise SystemExit(128 + stop.signum) from None
    finally:
        if outer:  # the handlers go before the depth drops: no signal finds no block to stop
            for sig, prev in _WATCH.previous.items():
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)  # None: set outside Python
            _WATCH.previous, _WATCH.jobs, _WATCH.local = {}, [], False
        _WATCH.depth -= 1


def watch(name: str, job: Any) -> Any:
    """Register a local job just started inside :func:`stop_with_launcher` (no-op elsewhere,
    and for other modes); returns ``job``."""
    if _WATCH.depth and _WATCH.local and not any(j is job for _, j in _WATCH.jobs):
        _WATCH.jobs.append((name, job))
    return job


@contextlib.contextmanager
def submitting() -> Iterator[None]:
    """Around submitting a job and :func:`watch`-ing it: a signal arriving in between waits until
    the block ends, so no job is started without being registered for cancellation."""
    _WATCH.critical += 1
    try:
        yield
    finally:
        _WATCH.critical -= 1
    if not _WATCH.critical and _WATCH.pending is not None and _WATCH.depth and not _WATCH.stopping:
        raise LauncherStopped(_WATCH.pending)


def _proc_table() -> dict[int, tuple[int, str, int]] | None:
    """pid -> (parent pid, state, start time) of every process (/proc); None without /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    out: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid`` from /proc/<pid>/stat; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def process_tree(pid: int) -> dict[int, int]:
    """``pid`` and its descendants, each with its start time (to tell a reused pid), from /proc;
    just ``pid`` (start time -1) without /proc."""
    table = _proc_table()
    if table is None:
        return {pid: -1}
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in table and p not in out:
            out[p] = table[p][2]
            todo += children.get(p, [])
    return out


def process_alive(pid: int, start: int = -1) -> bool:
    """Whether ``pid`` still runs (a zombie, or another process that reused the pid, does not)."""
    st = _proc_stat(pid)
    if st is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: only whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return st[1] not in ("Z", "X") and (start == -1 or st[2] == start)


def cancel_local_jobs(jobs: Sequence[tuple[str, Any]], grace_s: float = CANCEL_GRACE_S,
                      kill_wait_s: float = KILL_WAIT_S, poll_s: float = 0.2) -> list[str]:
    """Cancel the local jobs still running (submitit's ``job.cancel()``: SIGINT to the job's
    controller, which interrupts its tasks and kills them 1 s later), one line each on stderr;
    wait up to ``grace_s`` for every process of each job (the controller and its descendants,
    recorded before the cancel) to end, SIGKILL what is left, and wait up to ``kill_wait_s``
    more. Returns the names of the jobs cancelled."""
    cancelled: list[str] = []
    procs: dict[int, int] = {}  # pid -> start time, every process of every cancelled job
    ended: list[Any] = []
    for name, job in jobs:
        if job.done():
            continue
        with contextlib.suppress(ValueError, TypeError):  # a local job's id is its controller's pid
            procs.update(process_tree(int(job.job_id)))
        job.cancel()
        cancelled.append(name)
        ended.append(job)
        print(f"{name}: cancelled local job {job.job_id}", file=sys.stderr, flush=True)

    def left() -> dict[int, int]:
        for job in ended:
            job.done()  # reaps the controller (this process's child): a zombie would look alive
        return {p: s for p, s in procs.items() if process_alive(p, s)}

    deadline = time.monotonic() + grace_s
    while left() and time.monotonic() < deadline:
        time.sleep(poll_s)
    survivors = left()
    if survivors:
        print(f"{len(survivors)} process(es) of cancelled jobs still running {grace_s:.0f} s after the cancel; "
              f"killing {', '.join(map(str, sorted(survivors)))}", file=sys.stderr, flush=True)
        for pid in survivors:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + kill_wait_s
        while left() and time.monotonic() < deadline:
            time.sleep(poll_s)
        if left():
            print(f"still running after SIGKILL: {', '.join(map(str, sorted(left())))}", file=sys.stderr, flush=True)
    return cancelled


@contextlib.contextmanager
def sharing_cores(mode: str, jobs: int) -> Iterator[None]:
    """Local jobs started in the block run ``jobs`` at once on this machine: they inherit
    ``EMT_LOCAL_JOBS`` (submitit's local controller copies this process's environment), and
    :func:`emt.core.runtime.cpu_threads` gives each its share of the cores instead of its
    ``cluster.<kind>.cpus`` each. Other modes: nothing (SLURM gives each job its own cpus;
    debug jobs run one at a time in this process)."""
    if mode != "local":
        yield
        return
    before = os.environ.get(LOCAL_JOBS_ENV)
    os.environ[LOCAL_JOBS_ENV] = str(max(1, jobs))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOCAL_JOBS_ENV, None)
        else:
            os.environ[LOCAL_JOBS_ENV] = before


def run_queue(items: Sequence[tuple[str, Callable[[int | None], Any]]], width: int, mode: str,
              started: dict[str, Any] | None = None, jobs_per_item: int = 1) -> dict[str, tuple[bool, Any]]:
    """Run local/debug jobs ``width`` at a time (a LocalExecutor would start them all at once).

    Each item is (name, submit(gpu_slot) -> job); returns per name (ok, result or error text).
    ``started`` (if given) receives each job by name as it starts. ``jobs_per_item``: the local
    jobs one submit starts (a training job and its monitor: 2), for sizing their CPU threads.
    Local jobs end with the launcher (:func:`stop_with_launcher`); a submit that starts more
    than the job it returns registers the others with :func:`watch` itself.
    """
    slots = visible_slots(width)
    queue = list(items)
    running: dict[int, tuple[str, Any]] = {}
    results: dict[str, tuple[bool, Any]] = {}
    total, t0 = len(queue), time.time()
    with stop_with_launcher(mode), sharing_cores(mode, min(width, total) * jobs_per_item):
        while queue or running:
            for slot in range(width):
                if slot not in running and queue:
                    name, submit = queue.pop(0)
                    with submitting():
                        job = watch(name, submit(slots[slot]))
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


def report_results(results: dict[str, tuple[bool, Any]]) -> int:
    """Print how jobs ended (a training result's status and checkpoints; a failure's error text,
    on stderr); exit code 1 when any failed, else 0."""
    failed = {k: v for k, (ok, v) in results.items() if not ok}
    for name, (ok, res) in results.items():
        if ok and isinstance(res, dict) and "status" in res:
            n = len(res["checkpoints"]) if isinstance(res.get("checkpoints"), list) else "?"
            print(f"{name}: {res.get('status')} ({n} checkpoints)")
    for name, err in failed.items():
        print(f"{name}: FAILED\n{err}", file=sys.stderr)
    return 1 if failed else 0
