"""Score every checkpoint of a run: a SLURM job array, then consolidation into scores.h5.

    python launch/eval_array.py --run medical_mild                 # one run, on SLURM
    python launch/eval_array.py --all --per-task 10                # every run, 10 checkpoints a task
    python launch/eval_array.py --config configs/debug.yaml --run medical_mild --local
    python launch/eval_array.py --run medical_mild --dry-run       # what is scored, what is left

Use the same config and overrides as the training launch: they identify the run's directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emt.config import ConfigError
from emt.data import DataError
from emt.logs import setup_logging
from emt.pipeline import eval_runs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.samples_per_question=5")
    ap.add_argument("--config", default=str(CONFIGS / "paper.yaml"), help="sweep config YAML (default: %(default)s)")
    ap.add_argument("--cluster", default=None, help="cluster profile YAML (default: the config's 'cluster')")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run name(s), comma-separated, e.g. medical_mild")
    which.add_argument("--all", action="store_true", help="every run of the sweep")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, as given to launch/train.py")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--per-task", type=int, default=None, help="checkpoints per array task")
    size.add_argument("--tasks", type=int, default=None, help="number of array tasks")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the tasks on this machine (submitit LocalExecutor)")
    mode.add_argument("--debug", action="store_true", help="run the tasks in this process (submitit DebugExecutor)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be scored; submit nothing")
    ap.add_argument("--wait", action="store_true", help="with SLURM, wait for the array and consolidation")
    args = ap.parse_intermixed_args(argv)

    setup_logging()
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        return eval_runs(
            args.config,
            cluster=args.cluster,
            overrides=args.overrides,
            run_names=None if args.all else args.run.split(","),
            seeds=seeds,
            per_task=args.per_task,
            tasks=args.tasks,
            mode="local" if args.local else "debug" if args.debug else "slurm",
            dry_run=args.dry_run,
            wait=True if args.wait else None,
        )
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
