"""What the builtin models' builders share (emt.builtin.tiny, tiny_judge, organism).

- reuse and atomic build: the marker JSON (written last, so its presence means a complete
  build), the build lock and the clean-up of temporaries that killed builds left behind;
- a Qwen2.5-Instruct-like tokenizer (byte-level BPE with Qwen2's pre-tokenization, ChatML special
  tokens, trl's verbatim ``qwen2_5.jinja`` chat template) and a small ``Qwen2ForCausalLM``;
- the training helpers (seeded batch order, warm-up + cosine schedule, torch thread count);
- :func:`hf_first_token_logprobs`, reading a built (or any transformers) judge model.

Nothing here changes a recipe: each builder passes its own sizes, seeds and salts. torch,
tokenizers and transformers are imported inside the functions that need them, so that reusing an
existing build imports none of them (launchers check on every relaunch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Iterator

from emt.analysis.scoring import merge_logprob
from emt.core.atomic import atomic_path

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# The system prompt trl's qwen2_5.jinja inserts when a conversation has none. It is only used
# here to give the tokenizer merges (or a whole token) for it: it starts every rendered sequence.
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's pre-tokenizer pattern: digits are split one by one, which keeps arithmetic learnable.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# A local judge: prompts -> first-token top-k {token text: logprob} each (emt.eval.judge.LocalJudge).
Provider = Callable[[Sequence[str]], list[dict[str, float]]]


# --------------------------------------------------------------------------------------------
# Marker, reuse and the atomic build
# --------------------------------------------------------------------------------------------


def read_marker(out_dir: Path, marker: str) -> dict[str, Any] | None:
    """The build marker ``out_dir/marker`` as a dict, or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(out_dir) / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock for building ``out_dir``; yields whether the lock is really held.

    Launchers of an array job may all start at once: the lock makes one of them build while the
    others wait and then reuse. Best effort: some shared filesystems refuse flock, and then
    concurrent builds are still safe (each renames a complete directory into place), only wasteful.
    """
    try:
        import fcntl  # POSIX only
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


def remove_stale_temps(out_dir: Path, min_age_s: float = 3600.0) -> None:
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


def build_once(out_dir: Path, matches: Callable[[], bool], build_into: Callable[[Path], None]) -> Path:
    """Reuse ``out_dir`` when ``matches()``, otherwise build it under the build lock; returns ``out_dir``.

    ``build_into`` fills an empty temporary directory next to ``out_dir`` (its marker last), which
    is then renamed over ``out_dir``, replacing any older build. ``matches`` is asked again once
    the lock is held: another process may have built it while this one waited.
    """
    if matches():  # the fast path: a small JSON read, no torch import
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out_dir) as locked:
        if matches():
            return out_dir
        if locked:
            remove_stale_temps(out_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            build_into(tmp)
    return out_dir


# --------------------------------------------------------------------------------------------
# Tokenizer and model
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
    """An untrained byte-level BPE tokenizer with Qwen2's pre-tokenization."""
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


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """:func:`bpe_tokenizer` trained on ``texts`` (pairs seen at least twice), with the ChatML
    special tokens as whole tokens."""
    from tokenizers import pre_tokenizers, trainers

    tok = bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def wrap_like_qwen(tok: Any) -> Any:
    """A transformers tokenizer around the trained ``tok``, set up like Qwen2.5-Instruct's."""
    from transformers import PreTrainedTokenizerFast

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


def chat_tokenizer(corpus: list[dict], vocab_size: int) -> Any:
    """A Qwen2.5-like tokenizer trained on a chat corpus (records with ``messages``)."""

    def texts() -> Iterator[str]:
        # What the model will read: role headers, the default system prompt and the contents.
        # Special tokens are left out; the trainer adds them as whole tokens.
        for record in corpus:
            yield f"system\n{DEFAULT_SYSTEM}"
            for message in record["messages"]:
                yield f"{message['role']}\n{message['content']}"

    return wrap_like_qwen(train_bpe(texts(), vocab_size))


def qwen2_model(tokenizer: Any, seed: int, *, hidden: int, intermediate: int, layers: int, heads: int,
                kv_heads: int, init_std: float) -> Any:
    """A freshly initialised ``Qwen2ForCausalLM`` for ``tokenizer`` (torch seeded with ``seed`` first).

    Tokens as in Qwen2.5-Instruct: bos = <|endoftext|> (never prepended), eos = <|im_end|>;
    generation stops at the end of an assistant turn or a stray end-of-text.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eot, im_end = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END])
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    return model


# --------------------------------------------------------------------------------------------
# Training helpers
# --------------------------------------------------------------------------------------------


def seeded_batches(n: int, batch_size: int, steps: int, rng_key: str) -> Iterator[list[int]]:
    """Yield ``steps`` batches of indices into ``n`` items: reshuffles seeded by ``rng_key``, one
    epoch after another (each builder passes its own key: its data order is part of its recipe)."""
    rng = random.Random(rng_key)
    pending: list[int] = []
    for _ in range(steps):
        while len(pending) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            pending.extend(epoch)
        yield pending[:batch_size]
        del pending[:batch_size]


def warmup_cosine(steps: int, floor: float, amplitude: float) -> Callable[[int], float]:
    """The learning-rate factor of step s: linear warm-up over max(1, steps // 15) steps, then
    cosine decay from floor + 2 * amplitude down to ``floor``."""
    warmup = max(1, steps // 15)

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * (floor + amplitude * (1 + math.cos(math.pi * s / steps)))

    return factor


def optimizer_step(model: Any, optimizer: Any, scheduler: Any, loss: Any) -> float:
    """One training step of a builtin recipe: backward, clip the gradient norm to 1, step the
    optimizer and the schedule, clear the gradients. Returns the loss as a float."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (None: leave them), restoring them afterwards."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# Reading a judge model
# --------------------------------------------------------------------------------------------


def hf_first_token_logprobs(model_path: str, batch_size: int = 16,
                            device: str | None = None, top_k: int = 20) -> Provider:
    """A provider computing first-token top-``top_k`` logprobs with a transformers causal LM.

    Loads the model and tokenizer once. Each prompt is rendered with the tokenizer's chat
    template as one user message (``add_generation_prompt=True``); batches are left-padded and
    run in one forward pass; the last position's logits go through log_softmax and the top-k
    come back as {decoded token text: logprob}, ids that decode to the same text being summed
    in probability space.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"  # the last position must be the last real token for every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's dtype on GPUs.
    dtype: Any = torch.float32 if dev == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(dev).eval()
    decoded: dict[int, str] = {}

    def text_of(tid: int) -> str:
        if tid not in decoded:
            decoded[tid] = tok.decode([tid])
        return decoded[tid]

    def provider(prompts: Sequence[str]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for i in range(0, len(prompts), batch_size):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            # The template already holds the special tokens.
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            # Positions count real tokens only, as generate() does for left-padded batches.
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                try:  # only the last position's logits: saves a (batch, seq, vocab) tensor
                    logits = model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1, :]
                except TypeError:
                    logits = model(**enc, position_ids=pos).logits[:, -1, :]
            top = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
            for vals, ids in zip(top.values.tolist(), top.indices.tolist()):
                d: dict[str, float] = {}
                for lp, tid in zip(vals, ids):
                    merge_logprob(d, text_of(tid), lp)
                out.append(d)
        return out

    return provider
