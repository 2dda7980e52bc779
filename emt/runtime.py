"""What a job knows about the machine it landed on."""

from __future__ import annotations

import os


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
