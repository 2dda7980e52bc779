"""Score every checkpoint of a run: a SLURM job array, then consolidation into scores.h5.

    python launch/eval_array.py --run medical_mild                 # one run, on SLURM
    python launch/eval_array.py --all --per-task 10                # every run, 10 checkpoints a task
    python launch/eval_array.py --run medical_mild --tasks auto --dry-run   # array size, with the arithmetic
    python launch/eval_array.py --config configs/debug.yaml --run medical_mild --local
    python launch/eval_array.py --run medical_mild --dry-run       # what is scored, what is left
    python launch/eval_array.py --run medical_mild --follow        # a monitor job: score checkpoints while
                                                                   # training runs, alert/stop (monitor.*)

Use the same config and overrides as the training launch: they identify the run's directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emt.launchers.cli import add_mode, mode_of, parser
from emt.core.config import ConfigError
from emt.sweep.data import DataError
from emt.core.logs import setup_logging
from emt.launchers.evaluate import eval_in_job, eval_runs, follow_runs

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"


def _tasks(text: str) -> int | str:
    """--tasks: a positive number, or auto."""
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a number of tasks >= 1 or 'auto', got {text!r}")
    return k


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, PAPER)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run name(s), comma-separated, e.g. medical_mild")
    which.add_argument("--all", action="store_true", help="every run of the sweep")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--per-task", type=int, default=None, help="checkpoints per array task")
    size.add_argument("--tasks", type=_tasks, default=None,
                      help="number of array tasks, or auto: from the checkpoints to score, the cost of one "
                           "(eval.checkpoint_cost_s, or earlier tasks' timings), cluster.array_parallelism "
                           "and cluster.eval.time_min")
    add_mode(ap)
    ap.add_argument("--dry-run", action="store_true", help="print what would be scored; submit nothing")
    ap.add_argument("--follow", action="store_true",
                    help="submit a monitor job per run instead of an array: it scores checkpoints as training "
                         "writes them, detects onsets online and runs monitor.actions (see configs/*.yaml monitor:)")
    stage = ap.add_mutually_exclusive_group()
    stage.add_argument("--task-index", type=int, default=None,
                       help="inside a job (slurm/eval.sbatch): evaluate shard I of --tasks K here")
    stage.add_argument("--consolidate-only", action="store_true",
                       help="inside a job (slurm/consolidate.sbatch): consolidate the run's results here")
    args = ap.parse_intermixed_args(argv)
    setup_logging()
    try:
        if args.task_index is not None or args.consolidate_only:
            if args.all:
                ap.error("--task-index/--consolidate-only take --run NAME")
            return eval_in_job(args.config, cluster=args.cluster, overrides=args.overrides,
                               run_names=args.run.split(","), seeds=args.seeds, task_index=args.task_index,
                               tasks=args.tasks)
        if args.follow:
            if args.per_task or args.tasks:
                ap.error("--follow scores checkpoints as they appear; --per-task/--tasks size an array")
            return follow_runs(args.config, cluster=args.cluster, overrides=args.overrides,
                               run_names=None if args.all else args.run.split(","), seeds=args.seeds,
                               mode=mode_of(args), dry_run=args.dry_run, wait=True if args.wait else None)
        return eval_runs(args.config, cluster=args.cluster, overrides=args.overrides,
                         run_names=None if args.all else args.run.split(","), seeds=args.seeds,
                         per_task=args.per_task, tasks=args.tasks, mode=mode_of(args),
                         dry_run=args.dry_run, wait=True if args.wait else None)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
