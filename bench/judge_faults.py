"""The judge under faults: right scores after one run, requests per prompt, and down-then-up.

Run::

    python -m bench.judge_faults                       # 1152 prompts, 30% of first attempts fail
    python -m bench.judge_faults --prompts 400 --fail 0.5 --transport httpx

It starts ``tests.fakes.judge_server`` in this process (a thread) and scores distinct prompts with
OpenAIJudge the way an eval task does (the SQLite cache on, the config's retry budget by
default: 6 retries). Table 1: a share ``--fail`` of the prompts gets a fault on its first
attempt, the kinds dealt round robin over 429 (Retry-After 0.2 s), 500, a timeout (the server
hangs past the client's 1 s timeout), a connection reset, a malformed JSON body and a truncated
body; every later attempt answers. A score is right when it equals what a fault-free server's
reply gives (``score_0_100`` of the same top-20, NaN for the hash responder's 1-in-16 refusals,
which are valid replies with too little numeric mass). Table 2: the judge goes down part-way
(every request after the first ``--down-after`` answers 500, for good): the run ends with the
rest failed (not cached); the judge comes back; a rerun asks only the failed prompts and the
scores are then all right. Table 3: nothing listens at all (connection refused): how long
until the one-line error, and how many requests it cost.

Counts come from the server's own counters; nothing here depends on timing except the timeout
fault itself. Takes about 100 s on 2 cores (both transports).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from emt.analysis.scoring import score_0_100
from emt.eval.judge import JudgeCache, JudgeUnavailable, OpenAIJudge
from tests.fakes.judge_server import Fault, JudgeServer, hash_responder

KINDS = ("429", "500", "timeout", "reset", "malformed", "truncated")


def expected(prompt: str) -> float:
    s = score_0_100(hash_responder(prompt))
    return math.nan if s is None else s


def right(prompt: str, score: float) -> bool:
    e = expected(prompt)
    return (math.isnan(e) and math.isnan(score)) or (not math.isnan(score) and abs(score - e) < 1e-9)


def prompts_for(n: int, tag: str) -> list[str]:
    # A terminator after the number: "p 12|" is not a substring of "p 123|" (faults match substrings).
    return [f"{tag} judge prompt {i:05d}| rate the answer 0-100" for i in range(n)]


def judge(url: str, transport: str, cache: JudgeCache, retries: int) -> OpenAIJudge:
    return OpenAIJudge(model="bench-judge", base_url=url, max_concurrency=32, timeout_s=1.0,
                       max_retries=retries, cache=cache, backoff_base_s=0.05, backoff_max_s=1.0,
                       transport=transport)  # type: ignore[arg-type]


def faults_table(n: int, share: float, transport: str, retries: int, tmp: Path) -> None:
    prompts = prompts_for(n, f"faults-{transport}")
    # Exactly round(n * share) prompts, spread evenly over the list.
    chosen = [prompts[i] for i in sorted({int(k / share) for k in range(round(n * share))}) if i < n]
    faults = [Fault(KINDS[k % len(KINDS)], prompt_contains=p.split("|")[0] + "|", times=1, retry_after=0.2,
                    hang_s=3.0) for k, p in enumerate(chosen)]
    server = JudgeServer(faults=faults)
    with server as url:
        j = judge(url, transport, JudgeCache(tmp / f"faults-{transport}.sqlite"), retries)
        t0 = time.perf_counter()
        res = j.score(prompts)
        wall = time.perf_counter() - t0
        counts = server.prompt_counts()
    n_right = sum(right(p, r.score) for p, r in zip(prompts, res))
    failed = Counter(r.reason for r in res if r.failed)
    by_kind = Counter(f.kind for f in faults if f.hits)
    print(f"\n1. {share:.0%} of first attempts fail ({transport}, max_retries={retries}): "
          f"{len(faults)} faulted prompts of {n}, {dict(by_kind)}")
    print(f"   {'right scores after one run':<34}{n_right}/{n} ({n_right / n:.1%})")
    print(f"   {'NaN (valid refusals, with reason)':<34}{sum(math.isnan(r.score) and not r.failed for r in res)}"
          f" (expected {sum(math.isnan(expected(p)) for p in prompts)})")
    print(f"   {'failed after every retry':<34}{sum(failed.values())} {dict(failed) or ''}")
    print(f"   {'requests per prompt':<34}{sum(counts.values()) / n:.3f} "
          f"(faulted prompts {sum(counts[p] for p in chosen) / max(1, len(chosen)):.2f}, others "
          f"{sum(c for p, c in counts.items() if p not in set(chosen)) / max(1, n - len(chosen)):.2f})")
    print(f"   {'wall':<34}{wall:.1f} s")


def down_then_up(n: int, down_after: int, transport: str, retries: int, tmp: Path) -> None:
    prompts = prompts_for(n, f"down-{transport}")
    server = JudgeServer(faults=[Fault("500", at=range(down_after + 1, 10**9), times=None)])
    db = tmp / f"down-{transport}.sqlite"
    with server as url:
        first = judge(url, transport, JudgeCache(db), retries).score(prompts)
        failed = [p for p, r in zip(prompts, first) if r.failed]
        asked_first = server.total_requests
        server.faults.clear()  # the judge is back
        server.reset_counts()
        again = judge(url, transport, JudgeCache(db), retries).score(prompts)
        counts = server.prompt_counts()
    n_right = sum(right(p, r.score) for p, r in zip(prompts, again))
    reasons = Counter(r.reason for r in first if r.failed)
    print(f"\n2. judge down after {down_after} requests, then back up ({transport}, max_retries={retries})")
    print(f"   {'run 1: right / failed':<34}{sum(right(p, r.score) and not r.failed for p, r in zip(prompts, first))} / "
          f"{len(failed)} of {n} ({asked_first} requests; {dict(reasons)})")
    print(f"   {'run 2: prompts asked':<34}{len(counts)} (= the failed ones: {set(counts) == set(failed)}; "
          f"{sum(counts.values())} requests)")
    print(f"   {'run 2: right scores':<34}{n_right}/{n} ({n_right / n:.1%})")


def refused(n: int, transport: str, retries: int, tmp: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    j = judge(f"http://127.0.0.1:{port}/v1", transport, JudgeCache(tmp / "refused.sqlite"), retries)
    t0 = time.perf_counter()
    try:
        j.score(prompts_for(n, "refused"))
        msg = "no error"
    except JudgeUnavailable as e:
        msg = str(e)
    print(f"\n3. nothing listening ({transport}): stopped after {time.perf_counter() - t0:.2f} s and "
          f"{j.usage()['calls']} requests of {n} prompts x {retries + 1} attempts")
    print(f"   {msg}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=1152, help="distinct prompts (the issue's run: 1152)")
    ap.add_argument("--fail", type=float, default=0.3, help="share of prompts whose first attempt fails")
    ap.add_argument("--retries", type=int, default=6, help="max_retries (judge.max_retries default: 6)")
    ap.add_argument("--down-after", type=int, default=400, help="requests answered before the judge goes down")
    default_t = "httpx,aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"
    ap.add_argument("--transport", default=default_t, help="comma-separated: httpx, aiohttp")
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}; {args.prompts} prompts; fault kinds {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory(prefix="emt-judge-faults-") as d:
        tmp = Path(d)
        for t in args.transport.split(","):
            faults_table(args.prompts, args.fail, t, args.retries, tmp)
            down_then_up(args.prompts, args.down_after, t, args.retries, tmp)
            refused(args.prompts, t, args.retries, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
