"""One table for a sweep: per run, its jobs' states, training step, checkpoints, scoring, failures.

    python launch/status.py                       # the paper sweep
    python launch/status.py --config configs/debug.yaml --sweep medical
    python launch/status.py --config debug --runs medical_mild,math_strong --json   # machine-readable

Use the same config and overrides as the launches: they identify the runs' directories.
Exit code 1 when a job failed (its log is listed).
"""

from __future__ import annotations

import sys

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt status``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("status", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
