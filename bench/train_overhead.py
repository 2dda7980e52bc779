"""Training step time and the cost of saving a checkpoint every 2 steps, as % of training time.

Run::

    python -m bench.train_overhead                              # tiny model, CPU, LoRA
    python -m bench.train_overhead --method full --deepspeed zero3
    python -m bench.train_overhead --model /models/Qwen2.5-7B-Instruct --steps 40   # a GPU, the study's settings

Each variant trains one run through emt's own training path (``emt.train.run.train_run``: the
Trainer, emt's checkpoint callbacks, markers) in a fresh child process, on the builtin debug
data. Times come from that one process: the checkpoint markers record, per checkpoint, the
training time since the previous checkpoint (``train_s``), the held-out evaluation
(``eval_s``) and the save (``save_s``: from the end of the step, or of the evaluation, until the
Trainer has written everything); CUDA is synchronised before each timestamp. The overhead is
median(save_s) / median(train_s) over the run's checkpoints (the first one, which includes
warm-up, left out), robust to a busy machine's stalls; the ratio of sums is printed too. The save is also split into its parts
by timing the Trainer's own methods (model or adapter, optimizer + scheduler or DeepSpeed state,
RNG state, trainer_state.json, tokenizer) and emt's marker callback.

Variants: ``resume state at every checkpoint`` (``checkpointing.resume_state_every`` unset: the
default, exact resume from the newest checkpoint) and ``resume state every N steps``
(``--resume-every``, default 10). Without ``--model`` the debug config is used (tiny model, batch
4 x accum 2); with it, configs/paper.yaml (batch 2 x accum 8, max_length 2048, LoRA r=32,
bf16) with ``model.name`` set to the path. ``--set key=value`` adds config overrides.
``--baseline`` adds a first variant with emt's save trimming undone (the tokenizer and peft's
model card written into every adapter checkpoint, the base config re-read and trl's run-level
model card rewritten on every save), so the effect of that trimming is measured in the same
session.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Trainer/peft/tokenizer methods whose time makes up a save (patched in the child only).
PARTS = {
    "Trainer save, total": ("transformers.trainer", "Trainer", "_save_checkpoint"),
    "model/adapter": ("transformers.trainer", "Trainer", "save_model"),
    "optimizer+scheduler": ("transformers.trainer", "Trainer", "_save_optimizer_and_scheduler"),
    "rng": ("transformers.trainer", "Trainer", "_save_rng_state"),
    "trainer_state": ("transformers.trainer_callback", "TrainerState", "save_to_json"),
    "tokenizer": ("transformers.tokenization_utils_base", "PreTrainedTokenizerBase", "save_pretrained"),
    "callbacks on_save": ("transformers.trainer_callback", "CallbackHandler", "on_save"),
}


def _patch_timers(acc: dict[str, list[float]]) -> None:
    import importlib

    for name, (mod, cls, meth) in PARTS.items():
        klass = getattr(importlib.import_module(mod), cls)
        orig = getattr(klass, meth)

        def timed(*a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                acc.setdefault(_name, []).append(time.perf_counter() - t)

        setattr(klass, meth, timed)


def _baseline_save_path() -> None:
    """Undo emt's save trimming (for the before/after comparison): every adapter checkpoint again
    gets the tokenizer and peft's model card, peft re-reads the base config, and trl rewrites the
    run's README.md model card on every save."""
    import contextlib

    from emt.train import checkpoints

    checkpoints.lean_adapter_save = lambda model: contextlib.nullcontext()  # type: ignore[assignment]
    make = checkpoints.make_trainer_class

    def make_baseline() -> type:
        from trl import SFTTrainer

        cls = make()
        cls.emt_save_tokenizer = property(lambda self: True, lambda self, v: None)  # type: ignore[assignment]
        cls.create_model_card = SFTTrainer.create_model_card  # trl's README.md in the run dir per save
        return cls

    checkpoints.make_trainer_class = make_baseline  # type: ignore[assignment]


def child(config: str, overrides: list[str], threads: int, out: "mp.Queue[Any]", baseline: bool = False) -> None:
    """Train one run in this (fresh) process; put the timings on ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    from emt.core import paths
    from emt.core.config import load_config
    from emt.launchers.preflight import prepare_builtin_data
    from emt.sweep.models import prepare_builtin_model
    from emt.sweep.runs import build_sweep
    if baseline:
        _baseline_save_path()
    from emt.train.run import train_run

    cfg = load_config(config, overrides)
    prepare_builtin_data(cfg)
    prepare_builtin_model(cfg)
    run = build_sweep(cfg, runs=["medical_mild"])[0]
    parts: dict[str, list[float]] = {}
    _patch_timers(parts)
    t0 = time.perf_counter()
    res = train_run(run)
    wall = time.perf_counter() - t0
    marks = [json.loads(paths.checkpoint_marker(p).read_text()) for _, p in paths.complete_checkpoints(run.path)]
    done = json.loads(paths.train_complete_file(run.path).read_text())
    size = sum(f.stat().st_size for f in paths.checkpoint_dir(run.path, marks[-1]["step"]).rglob("*") if f.is_file())
    out.put({"status": res.get("status"), "wall_s": wall, "markers": marks, "parts": parts,
             "steps": done["steps"], "ckpt_bytes": size, "device": torch.cuda.get_device_name(0)
             if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"})


def run_variant(config: str, overrides: list[str], threads: int, baseline: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # a fresh process: no torch.distributed or DeepSpeed state left over
    q: "mp.Queue[Any]" = ctx.Queue()
    p = ctx.Process(target=child, args=(config, overrides, threads, q, baseline))
    p.start()
    try:
        res = q.get(timeout=3600)
    finally:
        p.join(timeout=60)
    if p.exitcode not in (0, None):
        raise SystemExit(f"variant failed (exit {p.exitcode}): {overrides}")
    return res


def report(name: str, r: dict[str, Any], every: int) -> dict[str, float]:
    """Print one variant; return its headline figures."""
    m = r["markers"][1:]  # the first checkpoint's train_s includes warm-up (first batches, allocations)
    steps_per = [x["train_s"] / every for x in m]
    train = sum(x["train_s"] for x in m)
    save = sum(x["save_s"] for x in m)
    ev = sum(x["eval_s"] for x in m)
    n = len(r["markers"])
    print(f"\n{name}: {r['steps']} steps, {n} checkpoints ({r['ckpt_bytes'] / 1e6:,.2f} MB each as kept), "
          f"wall {r['wall_s']:.1f} s, {r['device']}")
    med_save = statistics.median(x["save_s"] for x in m)
    med_pct = 100 * med_save / statistics.median(x["train_s"] for x in m)
    print(f"  train step           median {statistics.median(steps_per) * 1e3:9.1f} ms")
    print(f"  save per checkpoint  median {med_save * 1e3:9.1f} ms"
          f"   -> save overhead {med_pct:5.1f}% of train time (medians; sums: {100 * save / train:.1f}%), "
          f"a checkpoint every {every} steps")
    print(f"  held-out eval        median {statistics.median(x['eval_s'] for x in m) * 1e3:9.1f} ms"
          f"   -> {100 * ev / train:5.1f}% of train time (measurement, not saving)")
    for part, ts in r["parts"].items():
        if part == "tokenizer" and len(ts) <= 1:
            continue  # the base model's tokenizer is read, not written, outside checkpoints
        print(f"    {part:<20} {statistics.median(ts) * 1e3:8.2f} ms x {len(ts)}")
    return {"step_ms": statistics.median(steps_per) * 1e3, "save_pct": med_pct}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a local model directory (default: the builtin tiny model)")
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--deepspeed", default=None, help="zero2 | zero3 | zero3_offload | a JSON path")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=2, help="checkpoint every N steps (the study: 2)")
    ap.add_argument("--resume-every", type=int, default=10, help="the second variant's resume_state_every")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="CPU only")
    ap.add_argument("--out", default=None, help="output root (default: a temporary directory)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--baseline", action="store_true",
                    help="first run the default variant with emt's save trimming undone (tokenizer, model card and "
                         "base-config reload in every adapter checkpoint): the before/after comparison")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="emt-bench-train-") as tmp:
        root = Path(args.out or tmp)
        if args.model:
            config = str(REPO / "configs" / "paper.yaml")
            base = [f"model.name={args.model}", "data.root=builtin:debug"]
        else:
            config = str(REPO / "configs" / "debug.yaml")
            base = ["model.tiny_pretrain_steps=20"]
        base += [f"training.max_steps={args.steps}", f"training.method={args.method}",
                 f"checkpointing.every_steps={args.every}", f"cluster.train.cpus={args.threads}", "cluster.train.gpus=1"]
        if args.deepspeed:
            base.append(f"training.deepspeed={args.deepspeed}")
        base += args.set
        print(f"{'model ' + args.model if args.model else 'builtin tiny model'}, {args.method}"
              f"{', DeepSpeed ' + args.deepspeed if args.deepspeed else ''}, {args.steps} steps, "
              f"a checkpoint every {args.every} steps; config {Path(config).name} {' '.join(args.set)}")
        res = {}
        every = ["checkpointing.resume_state_every=null"]  # paper.yaml sets 10: compare against every checkpoint
        variants = [("resume state at every checkpoint (default)", every, False),
                    (f"resume state every {args.resume_every} steps",
                     [f"checkpointing.resume_state_every={args.resume_every}"], False)]
        if args.baseline:
            variants.insert(0, ("BASELINE: untrimmed save path, resume state at every checkpoint", every, True))
        for name, extra, baseline in variants:
            ov = base + extra + [f"cluster.output_root={root / str(len(res))}"]
            res[name] = report(name, run_variant(config, ov, args.threads, baseline), args.every)
        print("\nsummary: " + "; ".join(f"{k}: step {v['step_ms']:.1f} ms, save overhead {v['save_pct']:.1f}%"
                                        for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
