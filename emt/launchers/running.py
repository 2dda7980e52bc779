"""Running submitted jobs to the end: local jobs a few at a time, and the summary of how they ended."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Sequence

from emt.jobs.slurm import visible_slots, wait_all

log = logging.getLogger(__name__)


def run_queue(items: Sequence[tuple[str, Callable[[int | None], Any]]], width: int, mode: str,
              started: dict[str, Any] | None = None) -> dict[str, tuple[bool, Any]]:
    """Run local/debug jobs ``width`` at a time (a LocalExecutor would start them all at once).

    Each item is (name, submit(gpu_slot) -> job); returns per name (ok, result or error text).
    ``started`` (if given) receives each job by name as it starts.
    """
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
