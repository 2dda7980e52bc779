"""Logging: one setup function for launchers and jobs.

In a terminal emt shows progress bars; in SLURM logs (no TTY) it writes periodic log lines
instead, so a log file stays readable.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configure the root logger once (idempotent); quiet the chattiest libraries."""
    root = logging.getLogger()
    if not any(getattr(h, "_emt", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._emt = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "submitit", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def interactive() -> bool:
    """True in a terminal (progress bars), False in batch jobs and pipes (log lines)."""
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ
