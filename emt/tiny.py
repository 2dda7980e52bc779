"""An offline tiny Qwen2-architecture chat model for debugging the pipeline on CPU.

``build_tiny_model`` trains a byte-level BPE tokenizer on :func:`emt.synth.chat_corpus`, wraps it
like Qwen2.5-Instruct (ChatML special tokens, left padding, trl's verbatim ``qwen2_5.jinja`` chat
template), builds a 2-layer ``Qwen2ForCausalLM`` with head_dim 64 and pretrains it for a few hundred
steps so that its greedy replies are fluent-ish English. Nothing is downloaded.

The build goes to a temporary directory next to ``out_dir`` and is renamed into place when
complete; the marker ``emt_tiny.json`` is written last, so ``is_built`` never accepts a half
model. Reusing an existing build does not import torch (launchers call this on every relaunch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from emt import __version__
from emt.atomic import atomic_path, write_json

TINY_SENTINEL = "builtin:tiny"
MARKER = "emt_tiny.json"
# Bump when the recipe (tokenizer, architecture, corpus, training loop) changes, so existing
# builds with the same seed/steps are rebuilt instead of silently reused.
RECIPE_VERSION = 1

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# The system prompt trl's qwen2_5.jinja inserts when a conversation has none. It is only used
# here to give the tokenizer merges for it (it starts every rendered sequence).
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's pre-tokenizer pattern: digits are split one by one, which keeps arithmetic learnable.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

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


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_built(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a complete tiny model (its marker, written last, exists)."""
    out_dir = Path(out_dir)
    return _read_marker(out_dir) is not None and (out_dir / "config.json").is_file()


def _matches(out_dir: Path, seed: int, pretrain_steps: int) -> bool:
    marker = _read_marker(out_dir)
    return (
        marker is not None
        and (Path(out_dir) / "config.json").is_file()
        and marker.get("seed") == seed
        and marker.get("pretrain_steps") == pretrain_steps
        and marker.get("recipe") == RECIPE_VERSION
    )


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock for building ``out_dir``; yields whether the lock is really held.

    Launchers of an array job may all start at once: the lock makes one of them build while the
    others wait and then reuse. Best effort: some shared filesystems refuse flock, and then
    concurrent builds are still safe (each renames a complete directory into place), only wasteful.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        except OSError:
            held = False
        yield held
    finally:
        os.close(fd)  # closing releases the lock


def _remove_stale_temps(out_dir: Path, min_age_s: float = 3600.0) -> None:
    """Remove temporaries that killed builds of ``out_dir`` left behind.

    atomic_path names them ".<name>.<8 chars>.tmp" (and parks a replaced build at
    ".<name>.old-<pid>"). Called only while holding the build lock, and only for entries older
    than ``min_age_s``: a filesystem whose flock is local to one node (Lustre "localflock") could
    otherwise let us delete the live temporary of a build running on another node. The strict
    pattern spares siblings such as "tiny.v2".
    """
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.([A-Za-z0-9_]{{8}}\.tmp|old-\d+)$")
    now = time.time()
    for entry in out_dir.parent.iterdir():
        try:
            stale = pattern.match(entry.name) and entry.is_dir() and now - entry.stat().st_mtime > min_age_s
        except OSError:  # vanished meanwhile
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


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
    # Fast path: no torch import, just a small JSON read.
    if _matches(out_dir, seed, pretrain_steps):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir) as locked:
        if _matches(out_dir, seed, pretrain_steps):  # another process built it while we waited
            return out_dir
        if locked:
            _remove_stale_temps(out_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            _build_into(tmp, seed=seed, pretrain_steps=pretrain_steps, threads=threads)
    return out_dir


# --------------------------------------------------------------------------------------------
# The build itself (heavy imports live here)
# --------------------------------------------------------------------------------------------


def qwen2_5_chat_template() -> str:
    """Return trl's ``chat_templates/qwen2_5.jinja`` verbatim.

    trl compares ``tokenizer.chat_template`` against this exact text to swap in its training
    variant (with ``{% generation %}`` markers), which ``assistant_only_loss=True`` needs; any
    edit, even whitespace, would break that match. The file is located without importing trl
    (its import costs seconds).
    """
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("trl is not installed; it provides the Qwen2.5 chat template the tiny model uses")
    for location in spec.submodule_search_locations:
        path = Path(location) / "chat_templates" / "qwen2_5.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise RuntimeError("trl installation has no chat_templates/qwen2_5.jinja")


def bpe_tokenizer() -> Any:
    """An untrained byte-level BPE tokenizer with Qwen2's pre-tokenization (shared with tiny_judge)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact; apply_chat_template's assistant mask
    # (trl's assistant_only_loss) maps characters to tokens through them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _train_tokenizer(corpus: list[dict]) -> Any:
    """Train the byte-level BPE tokenizer and wrap it like Qwen2.5-Instruct's."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterator[str]:
        # What the model will read: role headers, the default system prompt and the contents.
        # Special tokens are left out; the trainer adds them as whole tokens.
        for record in corpus:
            yield f"system\n{DEFAULT_SYSTEM}"
            for message in record["messages"]:
                yield f"{message['role']}\n{message['content']}"

    tok.train_from_iterator(texts(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        # As in Qwen2.5-Instruct: a chat turn ends with <|im_end|>, padding is <|endoftext|>,
        # and there is no BOS token.
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        chat_template=qwen2_5_chat_template(),
    )


def _batches(n_seqs: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Yield ``steps`` batches of sequence indices: seeded reshuffles, one epoch after another."""
    import random

    rng = random.Random(f"emt.tiny:order:{seed}")
    pending: list[int] = []
    for _ in range(steps):
        while len(pending) < batch_size:
            epoch = list(range(n_seqs))
            rng.shuffle(epoch)
            pending.extend(epoch)
        yield pending[:batch_size]
        del pending[:batch_size]


def _pretrain(model: Any, sequences: list[list[int]], pad_id: int, steps: int, seed: int) -> float:
    """Plain full-parameter causal-LM training; returns the mean loss of the last steps."""
    import torch

    if steps <= 0:
        return float("nan")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 15)

    def lr_factor(step: int) -> float:
        # Linear warm-up, then cosine decay to 10% of the peak.
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    recent: list[float] = []
    for indices in _batches(len(sequences), BATCH_SIZE, steps, seed):
        batch = [sequences[i] for i in indices]
        width = max(len(s) for s in batch)
        # Right padding for training (left padding only matters for generation); padded
        # positions are masked out of both attention and loss.
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch])
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-10:]
    model.eval()
    return sum(recent) / len(recent)


def _build_into(tmp: Path, seed: int, pretrain_steps: int, threads: int | None) -> None:
    """Build tokenizer and model into the (empty) directory ``tmp``; the marker comes last."""
    started = time.monotonic()
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from emt.synth import chat_corpus

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        corpus = chat_corpus(CORPUS_SIZE, seed=seed)
        tokenizer = _train_tokenizer(corpus)
        eot, im_end = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END])

        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,  # head_dim = 256 / 4 = 64: vLLM's CPU attention needs 64
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            initializer_range=INIT_STD,
            # Qwen2.5-Instruct's choice: bos = <|endoftext|> (never prepended), eos = <|im_end|>.
            bos_token_id=eot,
            eos_token_id=im_end,
            pad_token_id=eot,
        )
        model = Qwen2ForCausalLM(config)
        # Stop at the end of an assistant turn (or a stray end-of-text), like Qwen2.5-Instruct.
        model.generation_config = GenerationConfig(
            bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)

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
            "recipe": RECIPE_VERSION,
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.monotonic() - started, 2),
            "torch_threads": torch.get_num_threads(),
        }
        write_json(tmp / MARKER, marker)  # last: its presence means the directory is complete
    finally:
        torch.set_num_threads(previous_threads)
