#!/usr/bin/env python
"""Export every run's scores under a directory as one tidy table, for analysis elsewhere.

One row per (run, step, trait): run, domain, level, seed, step, trait, score, coherence,
train_loss, heldout_loss.

    python analysis/export.py outputs --out tidy.csv
    python analysis/export.py outputs --out tidy.parquet     # needs pyarrow

A thin wrapper over :func:`emt.report.report.tidy_frame`.
"""

from __future__ import annotations

import sys

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt export``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("export", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
