#!/usr/bin/env python
"""What activation capture adds to evaluating one checkpoint.

In one process, on one loaded model (base + a LoRA adapter swapped in, as in an eval task):

  * baseline: generating the checkpoint's answers (transformers backend: ``--prompts`` eval
    prompts x ``--samples`` answers of up to ``--max-new-tokens`` tokens);
  * capture: :meth:`emt.eval.capture.StepCapturer`-equivalent work: teacher-forced forward passes
    over every (prompt, answer) pair plus ``--train-prompts`` training prompts, keeping
    ``--layers`` layers, then writing the float16 ``.npz``;

and prints seconds per checkpoint and the ratio capture / generation, plus the bytes a
checkpoint's activations take on disk. Defaults: the builtin tiny model on CPU (built offline
under a temporary directory). ``--model PATH`` runs a real model (on a GPU when available).

    python -m bench.activation_capture [--model PATH] [--prompts 40] [--samples 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model directory (default: the builtin tiny model, built offline)")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--layers", default="1,-1", help="hidden_states indices (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from emt.eval import capture as act

    from emt.store import activations as store_act
    from emt.eval.generate import HFGenerator, Target
    from emt.builtin.synth import generate as synth
    from emt.builtin.traits import builtin

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from emt.builtin.tiny import build_tiny_model

            model = str(Path(tmp) / "tiny")
            build_tiny_model(Path(model), seed=0, pretrain_steps=20)
        gen = HFGenerator(model, batch_size=64)
        qs = [q for t in ("evil", "hallucination") for q in builtin(t).questions]
        convs = [[{"role": "user", "content": qs[i % len(qs)].text}] for i in range(args.prompts)]
        train = [ex["messages"][:-1] for ex in synth("medical", "misaligned_2", args.train_prompts)]
        target = Target(0)
        gen_t, cap_t = [], []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            answers = gen.generate(target, convs, args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=r)
            gen_t.append(time.perf_counter() - t0)
            flat_c = [c for c, ans in zip(convs, answers) for _ in ans]
            flat_a = [a for ans in answers for a in ans]
            t0 = time.perf_counter()
            with gen._model_for(target) as m:
                ev = act.capture(m, gen.tokenizer, flat_c, flat_a, layers, batch_size=16)
                tr = act.capture(m, gen.tokenizer, train, None, layers, batch_size=16)
            arrays = {"eval/prompt_mean": ev["prompt_mean"][::args.samples], "eval/prompt_last": ev["prompt_last"][::args.samples],
                      "eval/response_mean": ev["response_mean"], "train/prompt_mean": tr["prompt_mean"],
                      "train/prompt_last": tr["prompt_last"]}
            f = Path(tmp) / f"step-{r}.act.npz"
            store_act.save_step(f, arrays, meta={"layers": layers})
            cap_t.append(time.perf_counter() - t0)
        size = f.stat().st_size
        hidden = int(gen.model.config.hidden_size)
        gen.close()
    g, c = float(np.median(gen_t)), float(np.median(cap_t))
    print(f"model: {args.model or 'builtin tiny'} (hidden {hidden}); {args.prompts} prompts x {args.samples} answers "
          f"(<= {args.max_new_tokens} tokens), {args.train_prompts} training prompts, layers {layers}; "
          f"device {'cuda' if torch.cuda.is_available() else f'cpu, {args.threads} thread(s)'}")
    print(f"generation per checkpoint (baseline): {g:.2f} s   (median of {args.repeat})")
    print(f"activation capture per checkpoint:    {c:.2f} s   (x{c / g:.2f} of generation)")
    print(f"disk per checkpoint (float16 npz):    {size / 1e6:.2f} MB "
          f"(formula: {store_act.bytes_per_checkpoint(args.prompts, args.prompts * args.samples, args.train_prompts, len(layers), hidden) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
