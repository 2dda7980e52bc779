#!/usr/bin/env python
"""How long the analysis takes on a study-sized set of runs: read 6 scores.h5 + the headline table.

Builds, in a temporary directory, 6 scores.h5 files of 281 checkpoints x 3 traits (evil,
hallucination, sycophancy) x 20 questions x 10 samples through ``emt.store.consolidate`` (so the
schema is the real one), then times

  * baseline: the raw h5py read of every dataset of the 6 files (the I/O floor);
  * analysis: ``emt.store.load`` of all 6 + ``run_summary`` + ``headline_table`` (default onset method, foot);

and prints seconds and the ratio analysis / baseline. Target: analysis under 5 s.

    python bench/analysis_speed.py [--runs 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 5.0


def _raw_read(files: list[Path]) -> int:
    """Read every dataset of every file with plain h5py: the floor any loader pays."""
    import h5py

    n = 0

    def visit(_name: str, obj: object) -> None:
        nonlocal n
        if isinstance(obj, h5py.Dataset):
            obj[()]
            n += 1

    for f in files:
        with h5py.File(f, "r") as h5:
            h5.visititems(visit)
    return n


def main(argv: list[str] | None = None) -> int:
    from emt import store
    from emt.analysis import headline_table, run_summary
    from emt.analysis.report import write_synthetic_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many (default %(default)s)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = []
        for i in range(args.runs):
            dom, lvl = ("medical", "math")[i % 2], ("normal", "mild", "strong")[i % 3]
            files.append(write_synthetic_run(
                Path(tmp) / f"runs/{dom}_{lvl}_s{i}-abc123", f"{dom}_{lvl}_s{i}",
                {"hallucination": 100 + i, "evil": 110 + i, "sycophancy": None}, n=281, q=20, s=10,
                sigma=5.0, seed=i))
        build = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"built {len(files)} files ({size:.1f} MiB) in {build:.1f} s")

        base, full = float("inf"), float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _raw_read(files)
            base = min(base, time.perf_counter() - t0)
            t0 = time.perf_counter()
            runs = [store.load(f) for f in files]
            table = headline_table([run_summary(d) for d in runs])
            full = min(full, time.perf_counter() - t0)
        print(table[["run", "onset_hallucination", "onset_evil", "lead_checkpoints"]].to_string(index=False))
        print(f"baseline (raw h5py read of {len(files)} files): {base:.3f} s")
        print(f"load + headline table:                      {full:.3f} s  (x{full / base:.2f} baseline)")
        ok = full < TARGET_S
        print(f"target < {TARGET_S:.0f} s: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
