"""emt.core.locks: flock-based locks between processes; a killed holder never blocks anyone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from emt.core.locks import FileLock, StepLocks

# Takes the locks named on its command line, says so, then sleeps until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from emt.core.locks import FileLock

    held = [FileLock(p) for p in sys.argv[2:]]
    assert all(lock.acquire(blocking=False) for lock in held)
    Path(sys.argv[1]).write_text("held")
    time.sleep(3600)
""")


def hold(tmp_path: Path, *locks: Path) -> subprocess.Popen[str]:
    marker = tmp_path / f"held-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(marker), *map(str, locks)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline, "the holder never took its locks"
        time.sleep(0.02)
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_file_lock_excludes_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    a, b = FileLock(path), FileLock(path)
    assert a.acquire(blocking=False) and not b.acquire(blocking=False)  # exclusive within one process too
    a.release()
    assert b.acquire(blocking=False)
    b.release()
    proc = hold(tmp_path, path)
    try:
        assert not a.acquire(blocking=False)
    finally:
        kill(proc)  # kill -9: the kernel drops its lock
    assert a.acquire(blocking=False)
    a.release()


def test_step_locks_claim_wait_and_take_over_from_a_dead_holder(tmp_path: Path) -> None:
    done: set[int] = set()
    locks = StepLocks(lambda s: tmp_path / f"step-{s}.lock", lambda s: s in done)
    other = hold(tmp_path, tmp_path / "step-2.lock", tmp_path / "step-4.lock")
    try:
        done.add(6)  # already scored: claimed by nobody
        mine, others = locks.claim([0, 2, 4, 6])
        assert (mine, others) == ([0], [2, 4])
        assert locks.unless_all_busy([2, 4, 8]) == [2, 4, 8]  # one is free: no waiting
        # wait_idle blocks while the other process lives (it sleeps for good: no timing involved)
        waiter = threading.Thread(target=locks.wait_idle, args=([2, 4],))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive()
        done.add(2)  # the other process scored step 2, then was killed before step 4
    finally:
        kill(other)
    waiter.join(120)
    assert not waiter.is_alive()
    assert locks.claim([2, 4]) == ([4], [])  # step 2 is skipped, step 4 is ours now
    locks.release(0)
    locks.release_all()
    fresh = StepLocks(lambda s: tmp_path / f"step-{s}.lock", lambda s: s in done)
    assert fresh.claim([0, 4]) == ([0, 4], [])
    fresh.release_all()


def test_unless_all_busy_waits_without_holding_and_drops_finished_steps(tmp_path: Path) -> None:
    done: set[int] = set()
    locks = StepLocks(lambda s: tmp_path / f"step-{s}.lock", lambda s: s in done)
    other = hold(tmp_path, tmp_path / "step-2.lock", tmp_path / "step-4.lock")
    out: list[list[int]] = []
    waiter = threading.Thread(target=lambda: out.append(locks.unless_all_busy([2, 4])))
    waiter.start()
    try:
        waiter.join(1.0)
        assert waiter.is_alive() and out == []
        done.update({2, 4})
    finally:
        kill(other)
    waiter.join(120)
    assert out == [[]]  # everything was done by the other process: nothing left, nothing held
    probe = FileLock(tmp_path / "step-2.lock")
    assert probe.acquire(blocking=False)
    probe.release()
