#!/usr/bin/env python
"""Export every run's scores under a directory as one tidy table, for analysis elsewhere.

One row per (run, step, trait): run, domain, level, seed, step, trait, score, coherence,
train_loss, heldout_loss.

    python analysis/export.py outputs --out tidy.csv
    python analysis/export.py outputs --out tidy.parquet     # needs pyarrow

A thin wrapper over :func:`emt.report.report.tidy_frame`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emt.core import atomic
from emt.report.report import NoScoresError, find_scores, load_runs, tidy_frame


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="output root, its runs/ directory, or one run directory")
    ap.add_argument("--out", type=Path, default=Path("tidy.csv"), help=".csv or .parquet (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(find_scores(args.dir))
    except NoScoresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    df = tidy_frame(runs)
    if args.out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("error: writing .parquet needs pyarrow, which is not installed (pip install pyarrow); "
                  "use --out <file>.csv instead", file=sys.stderr)
            return 2
        with atomic.atomic_path(args.out, suffix=".parquet") as tmp:
            df.to_parquet(tmp, index=False)
    elif args.out.suffix == ".csv":
        with atomic.atomic_path(args.out, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)
    else:
        print(f"error: --out must end in .csv or .parquet, got {args.out}", file=sys.stderr)
        return 2
    print(f"{len(runs)} runs, {len(df)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
