"""Activation capture: hidden states of a checkpoint at configured layers, for the diagnostics.

Layer indexing (documented once, here, because public code gets it wrong): transformers returns
``hidden_states`` as a tuple of ``num_hidden_layers + 1`` tensors. ``hidden_states[0]`` is the
token EMBEDDINGS (before any decoder layer); ``hidden_states[i]`` for i >= 1 is the output of
decoder layer i (1-based), and for Qwen2/Llama-style models the LAST entry has the final RMSNorm
applied (``model.norm``), unlike the others. emt's ``layers`` use exactly these indices: 0 =
embeddings, 1..L = after decoder layer 1..L, negative values count from the end (-1 = the last,
normed output). Persona-vector papers usually quote "layer 20" of Qwen2.5-7B meaning
``hidden_states[20]`` = the output of the 20th decoder layer.

Three vector kinds per prompt/answer, each [n_layers, hidden]:

* ``prompt_mean``: mean over the prompt's tokens (the chat-templated system + user turns and the
  assistant header);
* ``prompt_last``: the last prompt token (the position that predicts the first answer token);
* ``response_mean``: mean over the tokens of a generated answer (teacher-forced after its prompt).

Per checkpoint they are written to one ``.npz`` sidecar next to the checkpoint's result JSON
(atomically), and consolidation copies them into ``scores.h5`` under ``/activations``.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emt import atomic

KINDS = ("prompt_mean", "prompt_last", "response_mean")


def resolve_layers(layers: Sequence[int], num_hidden_layers: int) -> list[int]:
    """Configured layer indices -> indices into ``hidden_states`` (0 .. num_hidden_layers).

    ValueError naming the bad index and the valid range when one is out of range.
    """
    n = num_hidden_layers + 1
    out = []
    for li in layers:
        i = int(li)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"activation layer {i} is out of range for a model with {num_hidden_layers} decoder "
                             f"layers: use 0 (embeddings) .. {num_hidden_layers}, or -1 .. -{n}")
        out.append(j)
    return out


def _render_prompt(tokenizer: Any, conversation: Sequence[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def capture(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]],
    responses: Sequence[str | None] | None, layers: Sequence[int], batch_size: int = 8,
    max_length: int = 2048,
) -> dict[str, np.ndarray]:
    """Hidden states of ``model`` at ``layers`` for each conversation (and its answer).

    Args:
        model: a causal LM (transformers or peft-wrapped; its active adapter is used).
        tokenizer: the model's tokenizer (with a chat template).
        conversations: chat messages of each prompt (system/user turns).
        responses: one generated answer per conversation (teacher-forced after the prompt), or None
            for prompt-only capture (``response_mean`` is then absent).
        layers: indices into ``hidden_states`` (see the module docstring; negatives from the end).
        batch_size: sequences per forward pass. max_length: longer sequences keep their first
            ``max_length`` tokens (the prompt is never cut if it fits).

    Returns:
        ``{"prompt_mean", "prompt_last"[, "response_mean"]}``, each float32 [n, len(layers), hidden].
        An empty answer gives NaN in ``response_mean`` (no tokens to average, never zeros).
    """
    import torch

    n_layers = int(getattr(model.config, "num_hidden_layers", None) or model.config.get_text_config().num_hidden_layers)
    idx = resolve_layers(layers, n_layers)
    if responses is not None and len(responses) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(responses)} responses")
    seqs: list[tuple[list[int], int]] = []
    for i, conv in enumerate(conversations):
        p = _render_prompt(tokenizer, conv)[:max_length]
        r = [] if responses is None or not responses[i] else tokenizer(responses[i], add_special_tokens=False)["input_ids"]
        seqs.append((p + list(r)[: max(0, max_length - len(p))], len(p)))
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {k: [] for k in (KINDS if responses is not None else KINDS[:2])}
    with torch.inference_mode():
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b:b + batch_size]
            width = max(len(s) for s, _ in chunk)
            # right padding: positions 0..len-1 are real, so prompt/answer spans are plain slices
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (s, _) in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                att[r, : len(s)] = 1
            hs = model(input_ids=ids.to(dev), attention_mask=att.to(dev), output_hidden_states=True).hidden_states
            h = torch.stack([hs[i] for i in idx], dim=1).float()  # [B, L, T, H]
            pos = torch.arange(width)[None, :]
            plen = torch.tensor([p for _, p in chunk])[:, None]
            slen = torch.tensor([len(s) for s, _ in chunk])[:, None]
            pm = (pos < plen).to(h.dtype).to(h.device)  # [B, T]
            out["prompt_mean"].append(((h * pm[:, None, :, None]).sum(2) / pm.sum(1)[:, None, None]).cpu().numpy())
            last = (plen[:, 0] - 1).to(h.device)
            out["prompt_last"].append(h[torch.arange(len(chunk)), :, last, :].cpu().numpy())
            if responses is not None:
                rm = ((pos >= plen) & (pos < slen)).to(h.dtype).to(h.device)
                cnt = rm.sum(1)[:, None, None]
                with np.errstate(invalid="ignore"):
                    mean = ((h * rm[:, None, :, None]).sum(2) / cnt).cpu().numpy()  # 0/0 -> NaN: no answer tokens
                out["response_mean"].append(mean)
    hidden = int(model.config.hidden_size) if hasattr(model.config, "hidden_size") else 0
    return {k: (np.concatenate(v, axis=0).astype(np.float32) if v else np.zeros((0, len(idx), hidden), np.float32))
            for k, v in out.items()}


def sample_prompts(prompts: Sequence[Any], n: int, seed: int = 0) -> list[Any]:
    """A fixed, seeded sample of ``n`` prompts (all of them when there are fewer), in a stable order,
    so every checkpoint of a run sees the same training prompts."""
    if n >= len(prompts):
        return list(prompts)
    pick = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in pick]


def prompts_digest(conversations: Sequence[Sequence[dict[str, str]]]) -> str:
    """A short hash of the prompts, stored with the activations so that files captured on
    different prompt sets are never consolidated together."""
    h = hashlib.sha256()
    for conv in conversations:
        for m in conv:
            h.update(m.get("role", "").encode() + b"\0" + m.get("content", "").encode() + b"\1")
        h.update(b"\2")
    return h.hexdigest()[:12]


def save_step(path: Path, arrays: dict[str, np.ndarray], dtype: str = "float16", meta: dict[str, Any] | None = None) -> None:
    """Write one checkpoint's activations atomically as ``.npz`` (``dtype`` float16 halves the disk
    cost; float16 holds hidden states to ~3 significant digits, plenty for means and projections).
    ``meta`` (JSON-able) is stored alongside under ``__meta__``."""
    import json

    if dtype not in ("float16", "float32"):
        raise ValueError(f"activation dtype must be float16 or float32, got {dtype!r}")
    buf = io.BytesIO()
    data = {k: np.asarray(v).astype(dtype) for k, v in arrays.items()}
    data["__meta__"] = np.array(json.dumps(meta or {}))
    np.savez(buf, **data)
    atomic.write_bytes(path, buf.getvalue())


def load_step(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of one checkpoint's activation file."""
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
    return arrays, meta


def bytes_per_checkpoint(n_eval_prompts: int, n_answers: int, n_train_prompts: int, n_layers: int, hidden: int,
                         dtype: str = "float16") -> int:
    """Disk bytes of one checkpoint's activations: 2 prompt kinds for eval and training prompts,
    plus one response mean per answer, each [n_layers, hidden]."""
    itemsize = 2 if dtype == "float16" else 4
    vectors = 2 * n_eval_prompts + n_answers + 2 * n_train_prompts
    return vectors * n_layers * hidden * itemsize
