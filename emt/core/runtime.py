"""What a job knows about the machine it landed on."""

from __future__ import annotations

import contextlib
import os
import socket


def cpu_threads(default: int) -> int:
    """CPU threads for torch in a job: SLURM's allocation (else ``default``), never more than the
    cores this process may use. Oversubscribing is costly: on a busy 2-core machine, torch with
    more threads than free cores was measured 6-30x slower."""
    have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    want = int(os.environ.get("SLURM_CPUS_PER_TASK", default))
    return max(1, min(have, want))


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
