"""Train a sweep: one job per run (SLURM by default, --local on this machine).

    python launch/train.py --sweep all                         # the study, on SLURM
    python launch/train.py --config configs/debug.yaml --local # tiny model, this machine
    python launch/train.py --sweep medical --dry-run           # print the plan only
    python launch/train.py training.learning_rate=2e-5 --runs medical_mild
"""

from __future__ import annotations

import sys
from pathlib import Path

from emt.launchers.cli import add_mode, mode_of, parser
from emt.core.config import ConfigError
from emt.sweep.data import DataError
from emt.core.logs import setup_logging
from emt.launchers.train import train_sweep

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, PAPER)
    ap.add_argument("--sweep", default="all",
                    help="all | a domain | a level | a run name | schedules (the learning-schedule sweep; default: all)")
    ap.add_argument("--runs", default=None, help="comma-separated run names to keep, e.g. medical_mild,math_strong")
    add_mode(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the problems; submit nothing")
    ap.add_argument("--monitor", action="store_true",
                    help="submit a monitor job beside each training job: scores checkpoints as they appear, "
                         "alerts on trait onsets and applies monitor.actions (stop/rollback/mark)")
    args = ap.parse_intermixed_args(argv)
    setup_logging()
    try:
        return train_sweep(args.config, cluster=args.cluster, overrides=args.overrides, sweep=args.sweep,
                           runs=args.runs.split(",") if args.runs else None, seeds=args.seeds,
                           mode=mode_of(args), dry_run=args.dry_run, wait=True if args.wait else None,
                           monitor=args.monitor)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
