"""An offline tiny Qwen2-architecture chat model for debugging the pipeline on CPU.

``build_tiny_model`` trains a byte-level BPE tokenizer on :func:`emt.builtin.synth.chat_corpus`, wraps it
like Qwen2.5-Instruct (ChatML special tokens, left padding, trl's verbatim ``qwen2_5.jinja`` chat
template), builds a 2-layer ``Qwen2ForCausalLM`` with head_dim 64 and pretrains it for a few hundred
steps so that its greedy replies are fluent-ish English. Nothing is downloaded.

The build goes to a temporary directory next to ``out_dir`` and is renamed into place when
complete; the marker ``emt_tiny.json`` is written last, so ``is_built`` never accepts a half
model. Reusing an existing build does not import torch (launchers call this on every relaunch).
The building blocks shared with the other builtin models are in :mod:`emt.builtin.common`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from emt import __version__
from emt.builtin.common import (ENDOFTEXT, build_once, chat_tokenizer, optimizer_step, qwen2_model, read_marker,
                                seeded_batches, torch_threads, warmup_cosine)
from emt.builtin.synth import chat_corpus
from emt.core.atomic import write_json
from emt.core.paths import TINY_RECIPE_VERSION

TINY_SENTINEL = "builtin:tiny"
MARKER = "emt_tiny.json"

VOCAB_SIZE = 3000  # an upper bound: BPE stops earlier when no pair occurs twice (about 2.3k here)
CORPUS_SIZE = 400
MAX_LEN = 256
BATCH_SIZE = 6
LR = 2e-3
# Larger than Qwen2's 0.02 default: at hidden size 256 this trains markedly faster (measured:
# corpus loss 0.37 vs 0.72, held-out 0.82 vs 1.05 after 300 steps).
INIT_STD = 0.05


# --------------------------------------------------------------------------------------------
# Marker and reuse
# --------------------------------------------------------------------------------------------


def is_built(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a complete tiny model (its marker, written last, exists)."""
    out_dir = Path(out_dir)
    return read_marker(out_dir, MARKER) is not None and (out_dir / "config.json").is_file()


def _matches(out_dir: Path, seed: int, pretrain_steps: int) -> bool:
    marker = read_marker(out_dir, MARKER)
    return (
        marker is not None
        and (Path(out_dir) / "config.json").is_file()
        and marker.get("seed") == seed
        and marker.get("pretrain_steps") == pretrain_steps
        and marker.get("recipe") == TINY_RECIPE_VERSION
    )


def build_tiny_model(out_dir: Path, seed: int = 0, pretrain_steps: int = 300, threads: int | None = None) -> Path:
    """Build (or reuse) the tiny model at out_dir; return out_dir.

    Reuse needs a complete build with the same ``seed``, ``pretrain_steps`` and recipe version;
    that check reads one JSON file and imports nothing heavy. Otherwise the model is built in a
    temporary directory next to ``out_dir`` and renamed over it (replacing any older build).
    ``threads`` sets torch's intra-op threads for the build only (restored afterwards); 1 and 2
    threads gave bitwise identical weights when measured. On a CPU shared with other busy
    processes, ``threads=1`` is far faster than oversubscribed cores.
    """
    out_dir = Path(out_dir)
    return build_once(out_dir, lambda: _matches(out_dir, seed, pretrain_steps),
                      lambda tmp: _build_into(tmp, seed=seed, pretrain_steps=pretrain_steps, threads=threads))


# --------------------------------------------------------------------------------------------
# The build itself (heavy imports live here)
# --------------------------------------------------------------------------------------------


def _pretrain(model: Any, sequences: list[list[int]], pad_id: int, steps: int, seed: int) -> float:
    """Plain full-parameter causal-LM training; returns the mean loss of the last steps."""
    import torch

    if steps <= 0:
        return float("nan")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    # Linear warm-up, then cosine decay to 10% of the peak.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, floor=0.1, amplitude=0.45))
    model.train()
    recent: list[float] = []
    # The salt keeps this module's name when the recipe was defined (emt.tiny): it is part of the recipe.
    for indices in seeded_batches(len(sequences), BATCH_SIZE, steps, f"emt.tiny:order:{seed}"):
        batch = [sequences[i] for i in indices]
        width = max(len(s) for s in batch)
        # Right padding for training (left padding only matters for generation); padded
        # positions are masked out of both attention and loss.
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch])
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        recent = (recent + [optimizer_step(model, optimizer, scheduler, loss)])[-10:]
    model.eval()
    return sum(recent) / len(recent)


def _build_into(tmp: Path, seed: int, pretrain_steps: int, threads: int | None) -> None:
    """Build tokenizer and model into the (empty) directory ``tmp``; the marker comes last."""
    started = time.monotonic()
    import torch

    with torch_threads(threads):
        corpus = chat_corpus(CORPUS_SIZE, seed=seed)
        tokenizer = chat_tokenizer(corpus, VOCAB_SIZE)
        eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
        # head_dim = 256 / 4 = 64: vLLM's CPU attention needs 64.
        model = qwen2_model(tokenizer, seed, hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2,
                            init_std=INIT_STD)
        sequences = [
            list(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])[:MAX_LEN]
            for r in corpus
        ]
        loss = _pretrain(model, sequences, pad_id=eot, steps=pretrain_steps, seed=seed)

        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "seed": seed,
            "pretrain_steps": pretrain_steps,
            "final_pretrain_loss": None if math.isnan(loss) else round(loss, 4),
            "emt_version": __version__,
            "recipe": TINY_RECIPE_VERSION,
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.monotonic() - started, 2),
            "torch_threads": torch.get_num_threads(),
        }
        write_json(tmp / MARKER, marker)  # last: its presence means the directory is complete
