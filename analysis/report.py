#!/usr/bin/env python
"""Build the study report (headline table, figures, report.md/.html, tidy.csv) from every run's
scores.h5 under a directory.

    python analysis/report.py outputs                 # -> outputs/report/report.html
    python analysis/report.py outputs --out /tmp/rep --method pelt

A thin wrapper over :func:`emt.report.report.build_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emt.analysis.onset import DEFAULT_METHOD, METHODS
from emt.report.report import NoScoresError, build_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="output root, its runs/ directory, or one run directory")
    ap.add_argument("--out", type=Path, default=None, help="report directory (default: <dir>/report)")
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help="onset method (default %(default)s)")
    ap.add_argument("--no-figures", action="store_true", help="tables, markdown, HTML and CSV only")
    ap.add_argument("--n-boot", type=int, default=1000,
                    help="bootstrap replicates for the onset and lead-time intervals (0: none; default %(default)s)")
    args = ap.parse_args(argv)
    out = args.out if args.out is not None else args.dir / "report"
    try:
        paths = build_report(args.dir, out, method=args.method, figures=not args.no_figures, n_boot=args.n_boot)
    except NoScoresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths['runs'])} runs -> {paths['html']}")
    print(f"markdown: {paths['md']}\ntidy CSV: {paths['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
