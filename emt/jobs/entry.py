"""What a job runs: the callables submitit pickles into each job (:mod:`emt.jobs.slurm` submits them).

A job unpickles its callable by module path, so these classes must stay importable as
``emt.jobs.entry.<Name>`` by the environment the job starts in. The checkpointable ones are
requeued as-is on preemption or timeout: training state, results and scores live on disk, never
in the pickle. This module and :mod:`emt.jobs.slurm` are the only ones that import submitit.
"""

from __future__ import annotations

from typing import Any

import submitit

from emt.core.config import ServeSpec
from emt.eval.monitor import follow
from emt.eval.serve import run_server
from emt.eval.consolidate import consolidate_run
from emt.eval.plan import EvalTask
from emt.eval.task import harvest_run, run_eval_task
from emt.sweep.runs import Run
from emt.train import distributed
from emt.train.run import train_run


class TrainJob(submitit.helpers.Checkpointable):
    """The callable a training job runs; requeued as-is on preemption (it resumes from disk).

    A job with N tasks (``cluster.train.gpus`` > 1) runs it once per task; each task exports its
    rank, world size and rendezvous address from submitit's view of SLURM (SLURM_PROCID,
    SLURM_LOCALID, SLURM_NTASKS, the first host of SLURM_JOB_NODELIST; their SUBMITIT_LOCAL_*
    twins for --local jobs) before torch.distributed starts.
    """

    def __call__(self, run: Run) -> dict[str, Any]:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task: train_run sets up what it needs (DeepSpeed does)
            hosts = env.hostnames
            distributed.apply(distributed.for_task(env.global_rank, env.local_rank, env.num_tasks, env.num_nodes,
                                                   hosts[0] if hosts else "127.0.0.1", str(env.job_id)))
        return train_run(run)


class EvalJob(submitit.helpers.Checkpointable):
    """One eval array task; requeued as-is (it skips checkpoints whose results exist)."""

    def __call__(self, task: EvalTask) -> dict[str, Any]:
        return run_eval_task(task)


class ConsolidateJob(submitit.helpers.Checkpointable):
    """Consolidation of a run's results into scores.h5 (idempotent: it rewrites the file whole),
    after harvesting the checkpoints whose judgements the eval tasks left to the Batch API (on
    CPU; requeued as-is on timeout, it resumes the same batches)."""

    def __call__(self, run: Run, eval_hash: str) -> dict[str, Any]:
        harvested = harvest_run(run, eval_hash)["evaluated"]
        return {**consolidate_run(run, eval_hash), "harvested": sorted(harvested)}


class MonitorJob(submitit.helpers.Checkpointable):
    """The live monitor beside a training job (``launch/train.py --monitor``): scores checkpoints
    as they appear and acts on alerts; requeued as-is (it resumes from the results on disk)."""

    def __call__(self, run: Run) -> dict[str, Any]:
        return follow(run)


class ServeJob:
    """A judge server (``vllm serve``) for the length of the job; not requeued: a relaunch starts
    a fresh one, and eval tasks find it through its endpoint file (emt/eval/serve.py)."""

    def __call__(self, spec: ServeSpec, output_root: str, model_path: str) -> dict[str, Any]:
        return run_server(spec, output_root, model_path)
