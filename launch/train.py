"""Train a sweep: one job per run (SLURM by default, --local on this machine).

    python launch/train.py --sweep all                         # the study, on SLURM
    python launch/train.py --config configs/debug.yaml --local # tiny model, this machine
    python launch/train.py --sweep medical --dry-run           # print the plan only
    python launch/train.py training.learning_rate=2e-5 --runs medical_mild
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emt.config import ConfigError
from emt.data import DataError
from emt.logs import setup_logging
from emt.pipeline import train_sweep

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.epochs=2")
    ap.add_argument("--config", default=str(CONFIGS / "paper.yaml"), help="sweep config YAML (default: %(default)s)")
    ap.add_argument("--cluster", default=None, help="cluster profile YAML (default: the config's 'cluster')")
    ap.add_argument("--sweep", default="all", help="all | a domain | a level | a run name (default: all)")
    ap.add_argument("--runs", default=None, help="comma-separated run names to keep, e.g. medical_mild,math_strong")
    ap.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run jobs on this machine (submitit LocalExecutor)")
    mode.add_argument("--debug", action="store_true", help="run jobs in this process (submitit DebugExecutor)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the problems; submit nothing")
    ap.add_argument("--wait", action="store_true", help="with SLURM, wait for the jobs to finish")
    args = ap.parse_intermixed_args(argv)

    setup_logging()
    try:
        return train_sweep(
            args.config,
            cluster=args.cluster,
            overrides=args.overrides,
            sweep=args.sweep,
            runs=args.runs.split(",") if args.runs else None,
            seeds=args.seeds,
            mode="local" if args.local else "debug" if args.debug else "slurm",
            dry_run=args.dry_run,
            wait=True if args.wait else None,
        )
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
