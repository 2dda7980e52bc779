"""Score every checkpoint of a run: a SLURM job array, then consolidation into scores.h5.

    python launch/eval_array.py --run medical_mild                 # one run, on SLURM
    python launch/eval_array.py --all --per-task 10                # every run, 10 checkpoints a task
    python launch/eval_array.py --run medical_mild --tasks auto --dry-run   # array size, with the arithmetic
    python launch/eval_array.py --config configs/debug.yaml --run medical_mild --local
    python launch/eval_array.py --run medical_mild --dry-run       # what is scored, what is left
    python launch/eval_array.py --all --dry-run --json             # the same and its cost, as JSON on stdout
    python launch/eval_array.py --run medical_mild --follow        # a monitor job: score checkpoints while
                                                                   # training runs, alert/stop (monitor.*)

Use the same config and overrides as the training launch: they identify the run's directory.
"""

from __future__ import annotations

import sys

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt eval``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("eval", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
