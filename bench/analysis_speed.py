#!/usr/bin/env python
"""How long the analysis takes on a study-sized set of runs: read 6 scores.h5 + the headline table.

Builds, in a temporary directory, 6 scores.h5 files of 281 checkpoints x 3 traits (evil,
hallucination, sycophancy) x 20 questions x 10 samples through ``emt.store.scores.consolidate`` (so the
schema is the real one), then times

  * baseline: the raw h5py read of every dataset of the 6 files (the I/O floor);
  * load: ``emt.store.scores.load`` of all 6, with every string (answers, judge replies) and numbers only
    (``strings=False``, what the analysis uses). Target: numbers-only load under 1 s;
  * analysis: numbers-only load + ``run_summary`` with bootstrap intervals (``--n-boot`` 1000
    replicates, default onset method glr: onset intervals, lead interval, P(hallucination first))
    + ``headline_table`` + the per-domain table (seeds pooled). Target: under 5 s.

and prints seconds and the ratios to the baseline, and the headline table with its intervals.
The null table of glr's threshold is simulated once per process before timing (as in any
long-running analysis; its cost is printed separately).

    python -m bench.analysis_speed [--runs 6] [--repeat 3] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 5.0
LOAD_TARGET_S = 1.0


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
    from emt.store import scores as store
    from emt.analysis import headline_table, run_summary
    from emt.analysis.onset import glr_threshold
    from emt.report.report import domain_table
    from tests.fakes.synthetic import write_synthetic_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many (default %(default)s)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default %(default)s)")
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

        t0 = time.perf_counter()
        glr_threshold([281], 0.005)  # the simulated null table for this length, once per process
        print(f"glr null table for 281 checkpoints simulated in {time.perf_counter() - t0:.1f} s (once per process)")
        base, lfull, llean, full = (float("inf"),) * 4
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _raw_read(files)
            base = min(base, time.perf_counter() - t0)
            t0 = time.perf_counter()
            [store.load(f) for f in files]
            lfull = min(lfull, time.perf_counter() - t0)
            t0 = time.perf_counter()
            [store.load(f, strings=False) for f in files]
            llean = min(llean, time.perf_counter() - t0)
            t0 = time.perf_counter()
            runs = [store.load(f, strings=False) for f in files]
            sums = [run_summary(d, n_boot=args.n_boot) for d in runs]
            table = headline_table(sums)
            dom = domain_table(table, sums)
            full = min(full, time.perf_counter() - t0)
        cols = ["run", "onset_hallucination", "onset_hallucination_lo", "onset_hallucination_hi", "onset_evil",
                "onset_evil_lo", "onset_evil_hi", "lead_checkpoints", "lead_lo", "lead_hi", "p_early_first"]
        print(table[cols].to_string(index=False))
        print(dom[["domain", "level", "runs", "lead_checkpoints", "lead_lo", "lead_hi", "p_early_first"]].to_string(index=False))
        print(f"baseline (raw h5py read of every dataset of {len(files)} files): {base:.3f} s")
        print(f"store.load, every string:                  {lfull:.3f} s  (x{lfull / base:.2f} baseline)")
        print(f"store.load(strings=False):                 {llean:.3f} s  (x{llean / base:.2f} baseline, "
              f"x{llean / lfull:.3f} the full load)")
        print(f"load + headline ({args.n_boot} bootstrap replicates) + domain table: {full:.3f} s  "
              f"(x{full / base:.2f} baseline)")
        ok = full < TARGET_S and llean < LOAD_TARGET_S
        print(f"targets: numbers-only load < {LOAD_TARGET_S:.0f} s, analysis with intervals < {TARGET_S:.0f} s: "
              f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
