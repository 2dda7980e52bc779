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


# ---------------------------------------------------------------------------------------------
# HDF5 (written by consolidation, read by the diagnostics)
#
#   /activations/layers                          int64   [L]        hidden_states indices
#   /activations/train/prompt_mean|prompt_last   float   [n, P, L, H]  the seeded training-prompt sample
#   /activations/train/prompts                   str     [P]
#   /traits/<t>/activations/prompt_mean|prompt_last  float [n, q, L, H]
#   /traits/<t>/activations/response_mean            float [n, q, s, L, H]
#   /traits/<t>/persona/vector                   float32 [L, H]     attrs: kept, pairs, layers
#   /traits/<t>/persona/projection               float64 [n, q, s, L]  per answer
#   /traits/<t>/persona/mean | shift             float64 [n, L]


def write_h5(
    h5: Any, files: Sequence[Path], trait_shapes: dict[str, tuple[int, int]],
    persona_vectors: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Copy per-checkpoint activation files (one per step, in step order) into an open HDF5 file.

    Datasets are created once and filled step by step, so memory holds one checkpoint at a time
    (a 7B paper run is several GB). Every file must come from the same layers and prompt sets
    (checked via its metadata); a mismatch raises ValueError naming the file.
    """
    import h5py

    if not files:
        return
    arrays0, meta0 = load_step(files[0])
    layers = list(meta0.get("layers", []))
    offsets: dict[str, list[int]] = meta0.get("traits", {})
    n = len(files)
    dt = arrays0["eval/prompt_mean"].dtype
    L, H = arrays0["eval/prompt_mean"].shape[1:]
    h5.create_dataset("activations/layers", data=np.asarray(layers, dtype=np.int64))
    h5["activations"].attrs["dtype"] = str(dt)
    dsets: dict[str, Any] = {}
    if "train/prompt_mean" in arrays0:
        P = arrays0["train/prompt_mean"].shape[0]
        for k in ("prompt_mean", "prompt_last"):
            dsets[f"train/{k}"] = h5.create_dataset(f"activations/train/{k}", shape=(n, P, L, H), dtype=dt)
        h5.create_dataset("activations/train/prompts", data=np.array(meta0.get("train_prompts", [""] * P), dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
    for t, (q, s) in trait_shapes.items():
        if t not in offsets:
            continue
        dsets[f"{t}/prompt_mean"] = h5.create_dataset(f"traits/{t}/activations/prompt_mean", shape=(n, q, L, H), dtype=dt)
        dsets[f"{t}/prompt_last"] = h5.create_dataset(f"traits/{t}/activations/prompt_last", shape=(n, q, L, H), dtype=dt)
        dsets[f"{t}/response_mean"] = h5.create_dataset(f"traits/{t}/activations/response_mean", shape=(n, q, s, L, H), dtype=dt)
    proj: dict[str, dict[str, np.ndarray]] = {}
    base_resp: dict[str, np.ndarray] = {}
    for i, f in enumerate(files):
        arrays, meta = (arrays0, meta0) if i == 0 else load_step(f)
        if meta.get("layers") != layers or meta.get("eval_digest") != meta0.get("eval_digest") \
                or meta.get("train_digest") != meta0.get("train_digest"):
            raise ValueError(f"{f}: activations captured with other layers or prompts than {files[0]}; delete the "
                             f"stale file (and its result JSON) and rerun the eval array")
        if "train/prompt_mean" in arrays:
            dsets["train/prompt_mean"][i] = arrays["train/prompt_mean"]
            dsets["train/prompt_last"][i] = arrays["train/prompt_last"]
        for t, (q, s) in trait_shapes.items():
            if t not in offsets:
                continue
            a, _ = offsets[t]
            dsets[f"{t}/prompt_mean"][i] = arrays["eval/prompt_mean"][a:a + q]
            dsets[f"{t}/prompt_last"][i] = arrays["eval/prompt_last"][a:a + q]
            resp = arrays["eval/response_mean"][a * s:(a + q) * s].reshape(q, s, L, H)
            dsets[f"{t}/response_mean"][i] = resp
            pv = (persona_vectors or {}).get(t)
            if pv is None:
                continue
            from emt.persona import projections

            r = resp.reshape(q * s, L, H).astype(np.float64)
            if i == 0:
                base_resp[t] = r
            p = projections(r, pv["vector"], base_response_acts=base_resp[t])
            slot = proj.setdefault(t, {"projection": np.full((n, q, s, L), np.nan), "mean": np.full((n, L), np.nan),
                                       "shift": np.full((n, L), np.nan)})
            slot["projection"][i] = p["per_answer"].reshape(q, s, L)
            slot["mean"][i], slot["shift"][i] = p["mean"], p["shift"]
    for t, pv in (persona_vectors or {}).items():
        if t not in trait_shapes:
            continue
        g = h5.create_group(f"traits/{t}/persona")
        g.create_dataset("vector", data=np.asarray(pv["vector"], dtype=np.float32))
        for k in ("kept", "pairs", "pos_trait", "neg_trait"):
            if k in pv:
                g.attrs[k] = pv[k]
        g.attrs["layers"] = np.asarray(pv.get("layers", layers), dtype=np.int64)
        for k, v in proj.get(t, {}).items():
            g.create_dataset(k, data=v)


def read_h5(path: str | Path, responses: bool = False) -> dict[str, Any]:
    """The activations and persona signals of a scores.h5 (empty dict parts when absent).

    Returns ``{"layers", "train": {kind: [n, P, L, H]}, "traits": {t: {"activations": {...},
    "persona": {...}}}}``. Separate from :func:`emt.store.load` because these arrays are large;
    the largest, per-answer ``response_mean`` [n, q, s, L, H] and ``projection``, are read only
    with ``responses=True``.
    """
    import h5py

    out: dict[str, Any] = {"layers": [], "train": {}, "traits": {}}
    with h5py.File(path, "r") as h5:
        if "activations" in h5:
            out["layers"] = h5["activations/layers"][()].tolist()
            if "train" in h5["activations"]:
                out["train"] = {k: h5["activations/train"][k][()] for k in ("prompt_mean", "prompt_last")}
        for t, g in h5.get("traits", {}).items():
            tr: dict[str, Any] = {}
            if "activations" in g:
                tr["activations"] = {k: g["activations"][k][()] for k in g["activations"]
                                     if responses or k != "response_mean"}
            if "persona" in g:
                pg = g["persona"]
                tr["persona"] = {k: pg[k][()] for k in pg if responses or k != "projection"}
                tr["persona"].update({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in pg.attrs.items()})
            if tr:
                out["traits"][t] = tr
    return out


# ---------------------------------------------------------------------------------------------
# the eval task's side


def train_prompt_sample(run: Any, n: int, seed: int) -> list[list[dict[str, str]]]:
    """A fixed, seeded sample of ``n`` prompts from the run's TRAINING split (the messages before
    each example's last assistant turn), identical at every checkpoint of the run."""
    from emt.data import read_chat_jsonl, split_heldout

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
            from emt.generate import HFGenerator

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
        """Arrays and metadata of one checkpoint (see :func:`write_h5` for how they are laid out)."""
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
