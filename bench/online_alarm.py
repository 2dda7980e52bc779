#!/usr/bin/env python
"""The calibrated online alarm (``emt.analysis.online``, method glr): measured false-alarm rate
on null runs against the configured rate, and the detection delay on jumps of 4 and 8 sigma.

Null runs: ``--runs`` (1000) series of ``horizon`` (300) checkpoints, baseline 10-40 points,
Gaussian noise sigma 1-8 points, no change, fed one checkpoint at a time to
``OnlineDetector(method="glr")`` exactly as the monitor does. The measured rate is compared with
the configured one through the exact (Clopper-Pearson) 95% binomial interval of the count: PASS
when the configured rate lies inside it. A second null set adds what real series have (two
isolated upward spikes of 4-7 sigma, 1-3% NaN) and is reported beside it.

Delay: the same runs with a step of 4 or 8 sigma at a checkpoint drawn in 50-250; delay = the
checkpoint at which the alert fired minus the change checkpoint; alerts before the change are
counted as false alarms, not delays.

    nice -n 10 python -m bench.online_alarm [--runs 1000] [--rate 0.01] [--horizon 300]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def run_one(y: np.ndarray, rate: float, horizon: int) -> int | None:
    """The checkpoint index at which the alarm fires, or None."""
    from emt.analysis.online import OnlineDetector

    det = OnlineDetector("trait", "glr", false_alarm_rate=rate, horizon=horizon)
    steps = np.arange(y.size) * 2
    for i, (s, v) in enumerate(zip(steps, y)):
        if det.update(int(s), float(v)) is not None:
            return i
    return None


def series(rng: np.random.Generator, horizon: int, jump: float = 0.0, dirty: bool = False) -> tuple[np.ndarray, int]:
    sigma, base = rng.uniform(1.0, 8.0), rng.uniform(10.0, 40.0)
    y = base + rng.normal(0.0, sigma, horizon)
    c = int(rng.integers(50, 251))
    if jump:
        y[c:] += jump * sigma
    if dirty:
        sp = rng.choice(np.arange(1, horizon - 1), size=2, replace=False)
        y[sp] += rng.uniform(4.0, 7.0, 2) * sigma
        y[rng.choice(np.arange(1, horizon), size=int(rng.uniform(0.01, 0.03) * horizon), replace=False)] = np.nan
    return y, c


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import beta

    from emt.analysis.online import alarm_threshold

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.01, help="configured false-alarm rate per run")
    ap.add_argument("--horizon", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    h = alarm_threshold(args.rate, args.horizon)
    print(f"threshold for {args.rate:g} false alarms per run of {args.horizon} checkpoints: {h:.3f} "
          f"(simulated in {time.perf_counter() - t0:.1f} s)")

    def ci(k: int, n: int) -> tuple[float, float]:
        lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
        hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
        return lo, hi

    ok = True
    for label, dirty in (("gaussian null", False), ("null + 2 spikes + 1-3% NaN", True)):
        t0 = time.perf_counter()
        k = sum(run_one(series(rng, args.horizon, dirty=dirty)[0], args.rate, args.horizon) is not None
                for _ in range(args.runs))
        lo, hi = ci(k, args.runs)
        inside = lo <= args.rate <= hi
        if not dirty:
            ok = inside
        print(f"{label}: {k}/{args.runs} runs alarmed = {100 * k / args.runs:.2f}% (95% CI {100 * lo:.2f}-"
              f"{100 * hi:.2f}%), configured {100 * args.rate:g}%: {'inside' if inside else 'OUTSIDE'} "
              f"[{time.perf_counter() - t0:.0f} s]")
    print("| jump | runs | detected % | early (false) alarms | mean delay (checkpoints) | median | 95th pct |")
    print("|---|---|---|---|---|---|---|")
    for jump in (4.0, 8.0):
        delays, early, miss = [], 0, 0
        for _ in range(args.runs):
            y, c = series(rng, args.horizon, jump=jump)
            i = run_one(y, args.rate, args.horizon)
            if i is None:
                miss += 1
            elif i < c:
                early += 1
            else:
                delays.append(i - c)
        d = np.array(delays, dtype=np.float64)
        print(f"| {jump:g} sigma | {args.runs} | {100 * d.size / args.runs:.1f} | {early} | {d.mean():.2f} | "
              f"{np.median(d):.0f} | {np.percentile(d, 95):.0f} |")
    print(f"false-alarm rate within the binomial interval: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
