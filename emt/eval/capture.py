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
(atomically), and consolidation copies them into ``scores.h5`` under ``/activations``; both
file layouts live in :mod:`emt.store.activations`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

import numpy as np

from emt.eval.generate import HFGenerator
from emt.sweep.data import read_chat_jsonl, split_heldout

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


# ---------------------------------------------------------------------------------------------
# the eval task's side


def train_prompt_sample(run: Any, n: int, seed: int) -> list[list[dict[str, str]]]:
    """A fixed, seeded sample of ``n`` prompts from the run's TRAINING split (the messages before
    each example's last assistant turn), identical at every checkpoint of the run."""
    if n <= 0:
        return []
    d = run.config.data
    train, _ = split_heldout(read_chat_jsonl(run.data_file), d.heldout_fraction, d.split_seed, d.max_examples)
    prompts = []
    for ex in train:
        msgs = ex["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompts.append([dict(m) for m in msgs[:last]])
    return sample_prompts(prompts, n, seed)


class StepCapturer:
    """Captures one checkpoint's activations in an eval task.

    With the transformers generation backend the generator's own model (base + swapped adapter)
    is reused; with vLLM (which does not expose hidden states) a transformers copy of the base is
    loaded once next to the engine, so on a GPU leave room for it (eval.vllm.gpu_memory_utilization).
    """

    def __init__(self, cfg: Any, run: Any, generator: Any, base_model: str) -> None:
        a = cfg.activations
        self.layers = list(a.layers)
        self.batch_size = a.batch_size
        self.dtype = a.dtype
        self._gen = generator
        self._own = None
        if not hasattr(generator, "_model_for"):
            self._own = HFGenerator(base_model, dtype=cfg.model.dtype)
        hf = self._own or generator
        self._hf = hf
        n_layers = int(hf.model.config.num_hidden_layers)
        resolve_layers(self.layers, n_layers)  # a bad layer fails before any work
        self.train_convs = train_prompt_sample(run, a.train_prompts, a.sample_seed)

    def model_for(self, target: Any) -> Any:
        """Context manager: the transformers module for ``target`` (adapter active)."""
        return self._hf._model_for(target)

    @property
    def tokenizer(self) -> Any:
        return self._hf.tokenizer

    def capture(self, target: Any, traits: Sequence[Any], convs: Sequence[Any], answers: Sequence[Sequence[str]],
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and metadata of one checkpoint (see :func:`emt.store.activations.write_h5` for how they are laid out)."""
        n = len(answers[0]) if answers else 0
        flat_convs = [c for (_, _, c), ans in zip(convs, answers) for _ in ans]
        flat_ans = [a for ans in answers for a in ans]
        with self.model_for(target) as model:
            ev = capture(model, self.tokenizer, flat_convs, flat_ans, self.layers, self.batch_size)
            tr = capture(model, self.tokenizer, self.train_convs, None, self.layers, self.batch_size) \
                if self.train_convs else {}
        arrays = {"eval/prompt_mean": ev["prompt_mean"][::max(n, 1)], "eval/prompt_last": ev["prompt_last"][::max(n, 1)],
                  "eval/response_mean": ev["response_mean"]}
        if tr:
            arrays["train/prompt_mean"], arrays["train/prompt_last"] = tr["prompt_mean"], tr["prompt_last"]
        offsets: dict[str, list[int]] = {}
        row = 0
        for t in traits:
            offsets[t.name] = [row, len(t.questions)]
            row += len(t.questions)
        meta = {"layers": self.layers, "traits": offsets, "samples": n,
                "eval_digest": prompts_digest([c for _, _, c in convs]),
                "train_digest": prompts_digest(self.train_convs),
                "train_prompts": [c[-1]["content"] if c else "" for c in self.train_convs]}
        return arrays, meta

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
