"""Advisory file locks (``fcntl.flock``) that guard work two processes must not do twice.

A lock is held by an open file descriptor: the kernel releases it when the holder exits, however
it exits (kill -9 and node-local crashes included), so a dead holder never blocks anyone and no
lock file ever needs cleaning up. Lock files are never deleted either: deleting one while another
process waits on it would let a third process lock a new file of the same name at the same time.

Used for a run's training (``emt.train.checkpoints.run_lock``), each checkpoint of an evaluation
(:class:`StepLocks`), the persona vectors (``emt.eval.persona.ensure_vectors``) and the writer of a
``scores.h5`` (``emt.store.scores.consolidate``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if needed), through its own descriptor.

    Two ``FileLock`` objects on one path exclude each other even inside one process (flock
    locks belong to the open file description), so threads and processes alike are kept apart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once when another holder has it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[FileLock]:
    """Hold the lock on ``path`` for the ``with`` body, waiting for it as long as it takes."""
    lock = FileLock(path)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


class StepLocks:
    """The checkpoint locks of one evaluation task: a step is evaluated only by a holder of its lock.

    :meth:`claim` takes the free locks of the steps still without a result; a step locked by
    another live process (another launch's task, or the monitor) is left to it. :meth:`wait_idle`
    then waits until those holders are done, holding nothing, and the caller claims whatever they
    left without a result (a holder that failed or died). The result check is made with the lock
    held, so two processes never evaluate one step, whatever their timing; and a task never waits
    while holding a lock it has not handed to its judge (which releases it once the result is
    written), so two tasks can never wait on each other. Thread-safe.
    """

    def __init__(self, lock_path: Callable[[int], Path], done: Callable[[int], bool]) -> None:
        self._path = lock_path
        self._done = done
        self._held: dict[int, FileLock] = {}
        self._mutex = threading.Lock()

    def claim(self, steps: list[int]) -> tuple[list[int], list[int]]:
        """(steps now locked for this task, steps another process holds); finished steps are in neither."""
        mine, others = [], []
        for s in steps:
            lock = FileLock(self._path(s))
            if not lock.acquire(blocking=False):
                others.append(s)
            elif self._done(s):
                lock.release()
            else:
                with self._mutex:
                    self._held[s] = lock
                mine.append(s)
        return mine, others

    def unless_all_busy(self, steps: list[int]) -> list[int]:
        """``steps`` still without a result, once at least one of them is not locked elsewhere.

        While other processes hold every one of them, wait for those (holding nothing): a task
        left with nothing of its own then ends without loading a model. Called before
        :meth:`claim`: a step this object holds would count as busy.
        """
        while steps:
            busy = [s for s in steps if self._busy(s)]
            if len(busy) < len(steps):
                return steps
            self.wait_idle(busy)
            steps = [s for s in steps if not self._done(s)]
        return steps

    def _busy(self, step: int) -> bool:
        lock = FileLock(self._path(step))
        if not lock.acquire(blocking=False):
            return True
        lock.release()
        return False

    def wait_idle(self, steps: list[int]) -> None:
        """Block until no other process holds the lock of any of ``steps`` (taking none of them)."""
        for s in steps:
            lock = FileLock(self._path(s))
            if not lock.acquire(blocking=False):
                log.info("step %d is being evaluated by another process (another launch, or the monitor): "
                         "waiting for it (%s)", s, lock.path)
                lock.acquire(blocking=True)
            lock.release()

    def release(self, step: int) -> None:
        """Release a step's lock (idempotent): its result, or its set-aside, is written."""
        with self._mutex:
            lock = self._held.pop(step, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        with self._mutex:
            held, self._held = list(self._held.values()), {}
        for lock in held:
            lock.release()
