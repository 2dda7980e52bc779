#!/usr/bin/env python
"""Build the study report (headline table, figures, report.md/.html, tidy.csv) from every run's
scores.h5 under a directory.

    python analysis/report.py outputs                 # -> outputs/report/report.html
    python analysis/report.py outputs --out /tmp/rep --method pelt

A thin wrapper over :func:`emt.report.report.build_report`.
"""

from __future__ import annotations

import sys

from emt.launchers.main import script_main


def main(argv: list[str] | None = None) -> int:
    """``emt report``'s arguments and code (emt/launchers/main.py), with this script's help text."""
    return script_main("report", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
