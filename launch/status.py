"""One table for a sweep: per run, its jobs' states, training step, checkpoints, scoring, failures.

    python launch/status.py                       # the paper sweep
    python launch/status.py --config configs/debug.yaml --sweep medical

Use the same config and overrides as the launches: they identify the runs' directories.
Exit code 1 when a job failed (its log is listed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from emt.launchers.cli import parser
from emt.core.config import ConfigError
from emt.core.logs import setup_logging
from emt.launchers.status import sweep_status

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, PAPER)
    ap.add_argument("--sweep", default="all", help="all | a domain | a level | a run name (default: all)")
    args = ap.parse_intermixed_args(argv)
    setup_logging()
    try:
        return sweep_status(args.config, cluster=args.cluster, overrides=args.overrides, sweep=args.sweep,
                            seeds=args.seeds)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
