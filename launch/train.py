"""Train a sweep: one job per run (SLURM by default, --local on this machine).

    python launch/train.py --sweep all                         # the study, on SLURM
    python launch/train.py --config configs/debug.yaml --local # tiny model, this machine
    python launch/train.py --sweep medical --dry-run           # print the plan only
    python launch/train.py --sweep medical --dry-run --json    # the plan and its cost as one JSON document
    python launch/train.py training.learning_rate=2e-5 --runs medical_mild
"""

from __future__ import annotations

import sys

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt train``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("train", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
