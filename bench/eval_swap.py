"""Evaluating many LoRA checkpoints: swap adapters on one loaded model vs reload per checkpoint.

Run::

    python bench/eval_swap.py                           # hf backend, tiny model, 10 random adapters
    python bench/eval_swap.py --backend vllm --checkpoints 3
    python bench/eval_swap.py --threads 1               # CPU: see the note on threads below

Both patterns run in one process on the same adapters, prompts and seeds (so they generate the
same answers):

* hf: **swap** loads the base once and swaps adapters (``emt.generate.HFGenerator``);
  **reload** makes a new generator (loading the base model again) for every checkpoint.
* vllm: **one engine** with a ``LoRARequest`` per checkpoint; **engine per checkpoint** starts and
  shuts down a vLLM engine for every checkpoint (~20 s start + ~5 s teardown each on CPU, so keep
  ``--checkpoints`` small).

Printed: the time of each checkpoint in each pattern (for the fresh-load pattern including the
load), the one-off set-up of the swap pattern, totals and the ratio of totals.

On a GPU with a real model::

    python bench/eval_swap.py --backend vllm --model /models/Qwen2.5-7B-Instruct \\
        --adapters /scratch/emt/runs/medical_strong-1a2b3c4d --checkpoints 5 --prompts 100 \\
        --engine '{"gpu_memory_utilization": 0.85, "max_model_len": 4096}'

``--adapters`` takes a run directory holding ``checkpoint-*`` adapter dirs (the first
``--checkpoints`` are used); without it, random rank-``--rank`` LoRA adapters for every linear
layer are written to a temporary directory (loading the model once to do so). On a 2-core
machine shared with other processes, torch's default of 2 threads can stall on every small op
(OpenMP threads waiting for a busy core); ``--threads 1`` (or ``OMP_WAIT_POLICY=active``) avoids it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from emt.generate import Target, adapter_rank, make_generator


def random_adapters(model_dir: str, out: Path, count: int, rank: int) -> list[str]:
    """Write ``count`` LoRA adapters with random weights (no training) for ``model_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if not torch.cuda.is_available()
                                                 else torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    dirs = []
    for i in range(count):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    # Small random updates: outputs change per checkpoint but stay model-like.
                    param.copy_(torch.randn(param.shape, generator=gen) * (0.02 if "lora_A" in name else 0.002))
        path = out / f"checkpoint-{2 * (i + 1)}"
        peft_model.save_pretrained(path)
        dirs.append(str(path))
    del peft_model, model
    return dirs


def existing_adapters(run_dir: str, count: int) -> list[str]:
    """The first ``count`` ``checkpoint-<step>`` adapter dirs of a run, by step."""
    found = sorted((p for p in Path(run_dir).glob("checkpoint-*") if (p / "adapter_config.json").is_file()),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if len(found) < count:
        sys.exit(f"{run_dir} has {len(found)} adapter checkpoints, fewer than --checkpoints {count}")
    return [str(p) for p in found[:count]]


def step_of(adapter: str) -> int:
    return int(Path(adapter).name.rsplit("-", 1)[1])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--checkpoints", type=int, default=None, help="default 10 (hf) / 3 (vllm)")
    ap.add_argument("--model", default=None, help="base model dir; default: build the tiny model")
    ap.add_argument("--adapters", default=None, help="run dir with checkpoint-* adapters; default: random ones")
    ap.add_argument("--rank", type=int, default=8, help="rank of the random adapters")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--samples", type=int, default=4, help="answers per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    ap.add_argument("--engine", default="{}", help="JSON: extra vllm.LLM kwargs (vllm) / hf options")
    args = ap.parse_args(argv)
    n_ckpt = args.checkpoints or (10 if args.backend == "hf" else 3)
    engine = json.loads(args.engine)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from emt.synth import generate as synth

    with tempfile.TemporaryDirectory(prefix="emt-eval-swap-") as tmp:
        model = args.model
        if model is None:
            from emt.tiny import build_tiny_model

            t, _ = timed(lambda: build_tiny_model(Path(tmp) / "tiny", seed=0, pretrain_steps=100,
                                                 threads=args.threads))
            model = str(Path(tmp) / "tiny")
            print(f"built the tiny model in {t:.1f} s")
        if args.adapters:
            adapters = existing_adapters(args.adapters, n_ckpt)
        else:
            t, adapters = timed(lambda: random_adapters(model, Path(tmp) / "adapters", n_ckpt, args.rank))
            print(f"wrote {n_ckpt} random rank-{args.rank} adapters in {t:.1f} s")
        rank = max(adapter_rank(a) for a in adapters)
        convs = [[r["messages"][0]] for r in synth("medical", "normal", args.prompts)]
        gen_kw = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)

        def make() -> Any:
            return make_generator(args.backend, model, max_lora_rank=rank, dtype=args.dtype, engine=engine)

        def run(gen: Any, adapter: str) -> list[list[str]]:
            return gen.generate(Target(step_of(adapter), adapter=adapter), convs, args.samples, **gen_kw)

        print(f"backend={args.backend} model={model} checkpoints={n_ckpt} prompts={args.prompts} "
              f"samples={args.samples} max_new_tokens={args.max_new_tokens} torch_threads={torch.get_num_threads()} "
              f"device={'cuda' if torch.cuda.is_available() else 'cpu'}")

        def fresh_run(adapter: str) -> None:
            g = make()
            try:
                run(g, adapter)
            finally:
                g.close()

        # Pattern 1 (swap): one model / one engine, adapters swapped. Pattern 2 (fresh): a new
        # model / engine for every checkpoint. hf interleaves them checkpoint by checkpoint, so
        # load from other processes hits both alike (this holds two copies of the model); vLLM
        # runs them one after the other, as two engines may not fit in GPU memory together.
        setup, gen = timed(make)
        if args.backend == "hf":  # warm-up, so neither pattern pays first-call costs alone
            gen.generate(Target(0), convs[:2], 1, **gen_kw)
        swap, fresh = [], []
        for adapter in adapters:
            swap.append(timed(lambda: run(gen, adapter))[0])
            if args.backend == "hf":
                fresh.append(timed(lambda: fresh_run(adapter))[0])
        teardown, _ = timed(gen.close)
        if args.backend == "vllm":
            fresh = [timed(lambda: fresh_run(adapter))[0] for adapter in adapters]

    names = ("swap adapters, one model", "reload base per checkpoint") if args.backend == "hf" else \
        ("one engine, LoRARequest each", "new engine per checkpoint")
    print(f"\n{'checkpoint':<16}{names[0]:>30}{names[1]:>30}")
    for adapter, a, b in zip(adapters, swap, fresh):
        print(f"{Path(adapter).name:<16}{a:>29.2f}s{b:>29.2f}s")
    total_swap = setup + sum(swap) + teardown
    print(f"{'set-up':<16}{setup:>29.2f}s{'(in each row)':>30}")
    print(f"{'teardown':<16}{teardown:>29.2f}s{'(in each row)':>30}")
    print(f"{'median/ckpt':<16}{statistics.median(swap):>29.2f}s{statistics.median(fresh):>29.2f}s")
    print(f"{'total':<16}{total_swap:>29.2f}s{sum(fresh):>29.2f}s")
    print(f"\nratio (fresh / swap, totals): {sum(fresh) / total_swap:.2f}x")


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    main()
