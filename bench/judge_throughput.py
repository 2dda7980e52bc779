"""Throughput of OpenAIJudge against a local fake judge with a fixed latency.

Run::

    python -m bench.judge_throughput                          # 50 ms, concurrency 16,64,256
    python -m bench.judge_throughput --latency 0.2 --concurrency 8,32 --requests 400
    python -m bench.judge_throughput --transport httpx,aiohttp
    python -m bench.judge_throughput --base-url http://node12:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \
        --concurrency 8,32,128       # a real judge server (launch/judge_serve.py), e.g. on a GPU node

It starts ``tests.fakes.judge_server`` in a child process (so the server's CPU is not the client's) and
scores distinct prompts with one OpenAIJudge in this process (no cache) at each concurrency.
With a server that answers after ``latency`` seconds, ``concurrency`` requests in flight can at
best complete ``concurrency / latency`` requests per second: that is the bound, and the printed
ratio is measured req/s over the bound. A ratio near 1 means the latency is the limit (as with
a real provider, 0.3-1 s per request); well below 1 means the client's own CPU per request is
(shown as "client CPU/req"; one client process cannot exceed about 1 / that). Each setting runs
at least ``--requests`` requests, rounded up to 4 full waves of ``concurrency`` so the bound is
reachable; the default run takes about 15 s on 2 cores.

With ``--base-url`` the requests go to that server instead (``vllm serve`` of a judge model; the
prompts are then judge-sized: ``--prompt-chars``), and the bound uses the latency measured there
(median of sequential requests), so the ratio shows how far concurrency scales on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time

from emt.eval.judge import OpenAIJudge
from tests.fakes.judge_server import JudgeServer


def bench(url: str, transport: str, concurrency: int, n: int, latency: float, model: str = "gpt-4.1-mini",
          pad: str = "") -> dict[str, float]:
    """Score ``n`` fresh prompts at ``concurrency``; returns rate, bound, ratio, CPU/request."""
    judge = OpenAIJudge(model=model, base_url=url, max_concurrency=concurrency, transport=transport,  # type: ignore[arg-type]
                        max_retries=0, timeout_s=120.0)
    judge.score([f"warm-up {transport} {concurrency} {i} {pad}" for i in range(concurrency)])
    prompts = [f"bench {transport} {concurrency} {i} {pad}" for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    res = judge.score(prompts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    failed = sum(1 for j in res if j.reason and not j.reason.startswith("low numeric mass"))
    rate = n / wall
    bound = concurrency / latency
    return {"rate": rate, "bound": bound, "ratio": rate / bound, "cpu_ms": 1e3 * cpu / n,
            "wall": wall, "failed": failed}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    ap.add_argument("--requests", type=int, default=300, help="minimum requests per setting")
    ap.add_argument("--concurrency", default="16,64,256", help="comma-separated list")
    default_transports = "httpx,aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"
    ap.add_argument("--transport", default=default_transports,
                    help=f"comma-separated: httpx, aiohttp (default {default_transports})")
    ap.add_argument("--base-url", default=None, help="a real OpenAI-format judge server instead of the fake one")
    ap.add_argument("--model", default="gpt-4.1-mini", help="with --base-url: the served model name")
    ap.add_argument("--prompt-chars", type=int, default=3000,
                    help="with --base-url: prompt length (a judge prompt: rubric + question + answer)")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    transports = args.transport.split(",")
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")  # the local server ignores it

    if args.base_url:
        import statistics

        pad = ("Rate the answer below from 0 to 100. " * 200)[:args.prompt_chars]
        probe = OpenAIJudge(model=args.model, base_url=args.base_url, max_concurrency=1, max_retries=0,
                            timeout_s=120.0)
        lat = []
        for i in range(8):
            t0 = time.perf_counter()
            probe.score([f"latency probe {i} {pad}"])
            lat.append(time.perf_counter() - t0)
        latency = statistics.median(lat)
        print(f"OpenAIJudge vs {args.base_url} ({args.model}), median sequential latency {latency * 1e3:.0f} ms, "
              f"prompts of {args.prompt_chars} chars, python {sys.version.split()[0]}, {os.cpu_count()} cores")
        print(f"{'transport':>9} {'conc':>5} {'requests':>8} {'req/s':>7} {'bound':>7} {'ratio':>6} "
              f"{'client CPU/req':>14}")
        for transport in transports:
            for c in levels:
                n = math.ceil(max(args.requests, 4 * c) / c) * c
                r = bench(args.base_url, transport, c, n, latency, args.model, pad)
                note = f"  ({r['failed']} failed)" if r["failed"] else ""
                print(f"{transport:>9} {c:>5} {n:>8} {r['rate']:>7.0f} {r['bound']:>7.0f} "
                      f"{r['ratio']:>6.2f} {r['cpu_ms']:>11.2f} ms{note}", flush=True)
        return
    print(f"OpenAIJudge vs tests.fakes.judge_server (latency {args.latency * 1e3:.0f} ms, child process), "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'transport':>9} {'conc':>5} {'requests':>8} {'req/s':>7} {'bound':>7} {'ratio':>6} "
          f"{'client CPU/req':>14}")
    with JudgeServer(latency_s=args.latency, process=True,
                     max_requests=10_000_000, max_lifetime_s=600) as url:
        for transport in transports:
            for c in levels:
                n = max(args.requests, 4 * c)
                n = math.ceil(n / c) * c  # full waves only
                r = bench(url, transport, c, n, args.latency)
                note = f"  ({r['failed']} failed)" if r["failed"] else ""
                print(f"{transport:>9} {c:>5} {n:>8} {r['rate']:>7.0f} {r['bound']:>7.0f} "
                      f"{r['ratio']:>6.2f} {r['cpu_ms']:>11.2f} ms{note}", flush=True)


if __name__ == "__main__":
    main()
