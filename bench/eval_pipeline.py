"""An eval task with the judge pipelined behind generation vs judging in line, in one process.

Run::

    python -m bench.eval_pipeline                       # hf backend, tiny model, judge latency 0.5 s
    python -m bench.eval_pipeline --backend vllm --checkpoints 6 --latency 0.3

It builds a run directory with ``--checkpoints`` random LoRA checkpoints of the tiny model (no
training), starts ``tests.fakes.judge_server`` in a child process as the OpenAI-format judge (a fixed
``--latency`` per request, like an API), and runs the real eval task (``emt.eval.task.run_eval_task``)
over the checkpoints with ``eval.pipeline_judge`` false and true, alternating, ``--repeats``
times each (each run writes to its own results directory; the judge cache is off, so every run
makes every call).

Printed per mode: median seconds per checkpoint after start-up (``(wall - startup) / checkpoints``),
generation and judge time per checkpoint, and the ratio pipelined/sequential next to its bound
``max(gen, judge) / (gen + judge)``: pipelining can hide the shorter of the two, not more.

On a GPU with a real model and a real judge::

    python -m bench.eval_pipeline --backend vllm --model /models/Qwen2.5-7B-Instruct \\
        --adapters /scratch/emt/runs/medical_strong-1a2b3c4d --base-url http://node12:8000/v1 \\
        --judge-model Qwen/Qwen2.5-7B-Instruct --questions 20 --samples 10 --max-new-tokens 512
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.eval_swap import existing_adapters, random_adapters

REPO = Path(__file__).resolve().parent.parent


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def make_checkpoints(run_dir: Path, model: str, count: int, rank: int, adapters: str | None) -> list[int]:
    """``count`` complete checkpoint dirs (adapter + marker) in ``run_dir``: copies of a run's
    adapters, or random ones. Returns their steps."""
    from emt.core import atomic, paths

    tmp = run_dir / ".bench-adapters"
    src = existing_adapters(adapters, count) if adapters else random_adapters(model, tmp, count, rank)
    steps = []
    for i, a in enumerate(src):
        step = 2 * (i + 1)
        dest = paths.checkpoint_dir(run_dir, step)
        shutil.copytree(a, dest, dirs_exist_ok=True)
        atomic.write_json(paths.checkpoint_marker(dest), {"step": step, "train_loss": None, "heldout_loss": None})
        steps.append(step)
    shutil.rmtree(tmp, ignore_errors=True)
    return steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="base model dir (default: the builtin tiny model)")
    ap.add_argument("--adapters", default=None, help="run dir with checkpoint-* adapters (default: random)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--questions", type=int, default=8, help="questions per trait (2 traits)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.5, help="the fake judge's seconds per request")
    ap.add_argument("--concurrency", type=int, default=32, help="judge.max_concurrency")
    ap.add_argument("--base-url", default=None, help="a real OpenAI-format judge instead of the fake one")
    ap.add_argument("--judge-model", default="bench-judge")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import os

    import torch

    from emt.core.config import load_config
    from emt.eval.plan import EvalTask
    from emt.eval.task import run_eval_task
    from tests.fakes.judge_server import JudgeServer
    from emt.launchers.preflight import prepare_builtin_data
    from emt.sweep.models import prepare_builtin_model, resolve_model
    from emt.sweep.runs import build_sweep

    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    with tempfile.TemporaryDirectory(prefix="emt-eval-pipeline-") as tmp_name, \
            JudgeServer(latency_s=args.latency, process=True, max_lifetime_s=3600) as fake_url:
        url = args.base_url or fake_url
        judges = json.dumps([{"backend": "openai", "model": args.judge_model, "base_url": url}])
        overrides = [f"cluster.output_root={tmp_name}", f"eval.backend={args.backend}",
                     f"eval.questions_per_trait={args.questions}", f"eval.samples_per_question={args.samples}",
                     f"eval.max_new_tokens={args.max_new_tokens}", f"judge.judges={judges}", "judge.cache=false",
                     f"judge.max_concurrency={args.concurrency}", "model.tiny_pretrain_steps=100"]
        if args.model:
            overrides.append(f"model.name={args.model}")
        cfg = load_config(REPO / "configs" / "debug.yaml", overrides)
        prepare_builtin_data(cfg)
        prepare_builtin_model(cfg)
        run = build_sweep(cfg, "all", runs=["medical_mild"])[0]

        steps = make_checkpoints(run.path, resolve_model(cfg, cfg.model.name), args.checkpoints, args.rank, args.adapters)
        if args.threads:
            torch.set_num_threads(args.threads)
        prompts = 2 * 2 * args.questions * args.samples
        print(f"backend={args.backend} checkpoints={len(steps)} repeats={args.repeats} judge "
              f"{'at ' + url if args.base_url else f'tests.fakes.judge_server, {args.latency:g} s per request'}, "
              f"concurrency {args.concurrency}, {prompts} judge requests per checkpoint; load average {load_average()}")
        rec: dict[str, list[dict[str, Any]]] = {"sequential": [], "pipelined": []}
        for rep in range(args.repeats):
            for mode in ("sequential", "pipelined"):
                import dataclasses

                c = dataclasses.replace(run.config, eval=dataclasses.replace(run.config.eval,
                                                                              pipeline_judge=mode == "pipelined"))
                r = dataclasses.replace(run, config=c)
                stats = run_eval_task(EvalTask(r, tuple([0] + steps), 0, f"bench-{mode}-{rep}"))
                t = stats["timing"]
                k = len(t["evaluated"])
                rec[mode].append({"per_ckpt_s": (t["wall_s"] - t["startup_s"]) / k, "gen_s": t["gen_s"] / k,
                                  "judge_s": t["judge_s"] / k, "startup_s": t["startup_s"], "wall_s": t["wall_s"]})
                print(f"  {mode:>10} #{rep}: {rec[mode][-1]['per_ckpt_s']:.2f} s per checkpoint "
                      f"(generation {t['gen_s'] / k:.2f} s, judges {t['judge_s'] / k:.2f} s)", flush=True)

    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in rec.items()}
    seq, pip = med["sequential"], med["pipelined"]
    bound = max(seq["gen_s"], seq["judge_s"]) / (seq["gen_s"] + seq["judge_s"])
    print(f"\n{'per checkpoint (median)':<24}{'wall':>8}{'generation':>12}{'judges':>10}")
    for m in ("sequential", "pipelined"):
        print(f"{m:<24}{med[m]['per_ckpt_s']:>8.2f}{med[m]['gen_s']:>12.2f}{med[m]['judge_s']:>10.2f}")
    print(f"\nratio pipelined/sequential: {pip['per_ckpt_s'] / seq['per_ckpt_s']:.2f}   "
          f"bound max(gen, judge)/(gen + judge): {bound:.2f}   (load average {load_average()})")
    if args.json:
        Path(args.json).write_text(json.dumps({"median": med, "runs": rec, "bound": bound, "args": vars(args)},
                                              indent=2))


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    main()
