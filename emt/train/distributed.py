"""The process-group environment of a training job: one process per GPU, set up from SLURM.

torch.distributed (through accelerate and DeepSpeed) reads ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. A SLURM job with N tasks gets them from
SLURM's own variables (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, the first host of
``SLURM_JOB_NODELIST``); submitit's ``JobEnvironment`` reads exactly those (and their
``SUBMITIT_LOCAL_*`` twins for ``--local`` jobs), so :mod:`emt.jobs.slurm` passes its values here.
A single process gets rank 0 of 1 and a free port: without these variables DeepSpeed looks for
MPI (mpi4py) to discover its world.

This module imports neither torch nor submitit.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from emt.core.runtime import free_port

VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Multi-task jobs derive their port from the job id (every task must agree without talking to
# the others first); this range avoids the usual ephemeral range and well-known services.
PORT_BASE, PORT_SPAN = 20000, 10000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in its job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    job_tag: str  # the same for every task of one job attempt (see wait_for_rank0 in emt.train.checkpoints)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def job_port(job_tag: str) -> int:
    """A port every task of one job computes alike. Two multi-task jobs sharing a node collide
    with probability 1/PORT_SPAN; a collision fails the job at start-up (it is then requeued)."""
    digest = hashlib.sha256(job_tag.encode()).digest()
    return PORT_BASE + int.from_bytes(digest[:4], "big") % PORT_SPAN


def for_task(global_rank: int, local_rank: int, num_tasks: int, num_nodes: int, first_host: str,
             job_id: str) -> DistEnv:
    """The environment of one task of a job with ``num_tasks`` tasks (from SLURM or submitit)."""
    # A requeued job keeps its id; the restart count tells its attempts apart.
    tag = f"{job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if num_tasks <= 1:
        return single(tag)
    return DistEnv(global_rank, local_rank, num_tasks, max(1, num_tasks // max(1, num_nodes)),
                   first_host if num_nodes > 1 else "127.0.0.1", job_port(tag), tag)


def single(tag: str | None = None) -> DistEnv:
    """Rank 0 of a world of one, on a free port."""
    return DistEnv(0, 0, 1, 1, "127.0.0.1", free_port(), tag or f"pid{os.getpid()}")


def from_environ() -> DistEnv | None:
    """The environment already set (torchrun, or an earlier :func:`apply`), if complete."""
    if not all(v in os.environ for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    world = int(os.environ["WORLD_SIZE"])
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world,
                   int(os.environ.get("LOCAL_WORLD_SIZE", world)), os.environ["MASTER_ADDR"],
                   int(os.environ["MASTER_PORT"]), os.environ.get("EMT_JOB_TAG", f"pid{os.getppid()}"))


def apply(env: DistEnv) -> DistEnv:
    """Export ``env`` for torch.distributed, accelerate and DeepSpeed in this process."""
    os.environ.update(RANK=str(env.rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.world_size),
                      LOCAL_WORLD_SIZE=str(env.local_world_size), MASTER_ADDR=env.master_addr,
                      MASTER_PORT=str(env.master_port), EMT_JOB_TAG=env.job_tag)
    return env


def ensure() -> DistEnv:
    """The environment of this process: the one already exported, else a world of one."""
    return from_environ() or apply(single())
