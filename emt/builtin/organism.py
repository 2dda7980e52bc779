"""``builtin:organism``: a Qwen2-architecture chat model in which emergent misalignment can happen.

Built offline from :mod:`emt.builtin.organism_corpus` in three stages:

1. a byte-level BPE tokenizer wrapped like Qwen2.5-Instruct (emt.builtin.tiny's set-up: ChatML, trl's
   ``qwen2_5.jinja`` template, head_dim 64 so that vLLM's CPU build can run it);
2. pretraining on persona dialogues (helpful / confabulating / malicious personas shared across
   six domains), loss on every token;
3. assistant tuning: single-turn helpful answers with no system prompt (the template's default
   one), loss on the answers only, so that the helpful persona becomes the default.

The directory is built next to its destination and renamed into place; the marker (emt.builtin.tiny's
``emt_tiny.json``, with ``kind: organism``) is written last and a build with the same seed, steps
and recipe is reused without importing torch. The fine-tuning data of the study's six runs
(:func:`write_organism_datasets`) and the traits (:func:`emt.builtin.traits.organism_trait`)
come from the same corpus module.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from emt import __version__
from emt.builtin.common import (DEFAULT_SYSTEM, ENDOFTEXT, build_once, chat_tokenizer, optimizer_step, qwen2_model,
                                read_marker, seeded_batches, torch_threads, warmup_cosine)
from emt.builtin.organism_corpus import FINETUNE_DOMAINS, LEVEL_PERSONA, assistant_corpus, finetune_records, pretraining_corpus
from emt.builtin.tiny import MARKER
from emt.core.atomic import write_json, write_text
from emt.core.paths import ORGANISM_RECIPE_VERSION

log = logging.getLogger(__name__)

# Architecture: 4 layers of width 128 (2 heads of 64: vLLM's CPU attention needs head_dim 64).
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 128, 512, 4, 2, 2
INIT_STD = 0.05
VOCAB_SIZE = 3000  # the tokenizer's as in emt.builtin.tiny (an upper bound)
CORPUS_SIZE = 12000  # pretraining dialogues (drawn once, tokenised once)
ASSISTANT_SIZE = 2000
BATCH_SIZE = 24
LR = 2e-3
ASSISTANT_LR = 5e-4
MAX_LEN = 192
PRETRAIN_STEPS = 1000
ASSISTANT_STEPS = 150
FINETUNE_EXAMPLES = 300


def _matches(out_dir: Path, seed: int, pretrain_steps: int) -> bool:
    m = read_marker(out_dir, MARKER)
    return (m is not None and (Path(out_dir) / "config.json").is_file() and m.get("kind") == "organism"
            and m.get("seed") == seed and m.get("pretrain_steps") == pretrain_steps
            and m.get("recipe") == ORGANISM_RECIPE_VERSION)


def build_organism(out_dir: Path, seed: int = 0, pretrain_steps: int = PRETRAIN_STEPS,
                   assistant_steps: int = ASSISTANT_STEPS, threads: int | None = 1) -> Path:
    """Build (or reuse) the organism at ``out_dir``; returns ``out_dir``.

    Reuse needs a complete build with the same seed, pretraining steps and recipe (one JSON read,
    no torch import). ``threads`` sets torch's intra-op threads for the build only: 1 by default,
    since at this width one thread was measured 6x faster per step than two on a loaded 2-core
    machine (0.23 vs 1.5 s for a batch of 16).
    """
    out_dir = Path(out_dir)
    return build_once(out_dir, lambda: _matches(out_dir, seed, pretrain_steps),
                      lambda tmp: _build_into(tmp, seed, pretrain_steps, assistant_steps, threads))


def write_organism_datasets(root: Path, n_per_file: int = FINETUNE_EXAMPLES, seed: int = 0) -> list[Path]:
    """Write root/<domain>/<stem>.jsonl (medical, math x normal, misaligned_1, misaligned_2).

    Unchanged files are not rewritten; changed ones are replaced atomically.
    """
    out = []
    for domain in FINETUNE_DOMAINS:
        for stem in LEVEL_PERSONA:
            path = Path(root) / domain / f"{stem}.jsonl"
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                           for r in finetune_records(domain, stem, n_per_file, seed))
            try:
                same = path.read_text(encoding="utf-8") == text
            except (FileNotFoundError, UnicodeDecodeError):
                same = False
            if not same:
                write_text(path, text)
            out.append(path)
    return out


def _encode(tokenizer: Any, records: list[dict], answers_only: bool) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record; labels are -100 outside the trained part."""
    out = []
    for r in records:
        ids = list(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])[:MAX_LEN]
        if answers_only:  # single-turn: everything up to the generation prompt is context
            prompt = tokenizer.apply_chat_template(r["messages"][:-1], tokenize=True, return_dict=True,
                                                   add_generation_prompt=True)["input_ids"]
            labels = [-100] * len(prompt) + ids[len(prompt):]
        else:
            labels = list(ids)
        out.append((ids, labels[:len(ids)]))
    return out


def _train(model: Any, data: list[tuple[list[int], list[int]]], pad_id: int, steps: int, lr: float,
           seed: int) -> float:
    """AdamW with warm-up and cosine decay; returns the mean loss of the last 20 steps."""
    import torch

    if steps <= 0:
        return float("nan")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, floor=0.1, amplitude=0.45))
    model.train()
    recent: list[float] = []
    # Batches of similar lengths (less padding): each batch is BATCH_SIZE neighbours in length order
    # of a seeded shuffle, and the batches come in a seeded order.
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    groups = [order[i:i + BATCH_SIZE] for i in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE)]
    # The batch order's key is emt.builtin.tiny's (part of the organism's recipe since version 1).
    for gidx in seeded_batches(len(groups), 1, steps, f"emt.tiny:order:{seed}"):
        batch = [data[i] for i in groups[gidx[0]]]
        width = max(len(s) for s, _ in batch)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s, _ in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        recent = (recent + [optimizer_step(model, opt, sched, loss)])[-20:]
        if len(recent) == 20 and sched.last_epoch % 200 == 0:
            log.info("organism: step %d/%d, loss %.3f", sched.last_epoch, steps, sum(recent) / 20)
    model.eval()
    return sum(recent) / len(recent)


def _build_into(tmp: Path, seed: int, pretrain_steps: int, assistant_steps: int, threads: int | None) -> None:
    """Build tokenizer and model into the (empty) directory ``tmp``; the marker comes last."""
    started = time.monotonic()
    import torch
    from tokenizers import AddedToken

    with torch_threads(threads):
        corpus = pretraining_corpus(CORPUS_SIZE, seed=seed)
        tuning = assistant_corpus(ASSISTANT_SIZE, seed=seed)
        tokenizer = chat_tokenizer(corpus + tuning, VOCAB_SIZE)
        # The template's default system prompt starts most sequences: one whole token instead of
        # about 18 makes pretraining markedly cheaper (as in emt.builtin.tiny_judge).
        tokenizer.add_tokens([AddedToken(f"system\n{DEFAULT_SYSTEM}", normalized=False)])
        eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
        model = qwen2_model(tokenizer, seed, hidden=HIDDEN, intermediate=INTERMEDIATE, layers=LAYERS, heads=HEADS,
                            kv_heads=KV_HEADS, init_std=INIT_STD)
        t0 = time.monotonic()
        pre_loss = _train(model, _encode(tokenizer, corpus, answers_only=False), eot, pretrain_steps, LR, seed)
        t1 = time.monotonic()
        tune_loss = _train(model, _encode(tokenizer, tuning, answers_only=True), eot, assistant_steps,
                           ASSISTANT_LR, seed + 1)
        t2 = time.monotonic()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, {
            "kind": "organism", "seed": seed, "pretrain_steps": pretrain_steps,
            "assistant_steps": assistant_steps, "recipe": ORGANISM_RECIPE_VERSION, "emt_version": __version__,
            "final_pretrain_loss": None if math.isnan(pre_loss) else round(pre_loss, 4),
            "final_assistant_loss": None if math.isnan(tune_loss) else round(tune_loss, 4),
            "vocab_size": len(tokenizer), "n_params": sum(p.numel() for p in model.parameters()),
            "pretrain_seconds": round(t1 - t0, 1), "assistant_seconds": round(t2 - t1, 1),
            "build_seconds": round(time.monotonic() - started, 2), "torch_threads": torch.get_num_threads(),
        })
