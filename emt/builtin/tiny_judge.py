"""A tiny offline-built judge model for the CPU demo.

A separate Qwen2ForCausalLM with its own byte-level BPE tokenizer, trained only on judge
examples: the builtin evil / hallucination judge prompts and the coherence prompt filled with
synthetic answers (emt.builtin.synth), the target being one whole-number token (0..100) then <|im_end|>.
Used through :func:`emt.builtin.common.hf_first_token_logprobs` like any transformers judge.

The fixed parts of the judge templates (and the default system prompt) are added to the
tokenizer as whole tokens, so a judge prompt is a handful of tokens plus the question and the
answer: training is short and the model has little besides the answer to look at.
"""

from __future__ import annotations

import math
import random
import re
import time
from pathlib import Path
from typing import Any

from emt import __version__
from emt.analysis.scoring import score_0_100
from emt.builtin.common import (DEFAULT_SYSTEM, ENDOFTEXT, IM_END, hf_first_token_logprobs, optimizer_step, qwen2_model,
                                read_marker, seeded_batches, torch_threads, train_bpe, warmup_cosine, wrap_like_qwen)
from emt.builtin.organism_corpus import labelled_answers
from emt.builtin.synth import chat_corpus, generate
from emt.builtin.traits import Question, Trait, builtin, organism_trait
from emt.core.atomic import atomic_path, write_json
from emt.core.paths import ORGANISM_JUDGE_RECIPE_VERSION, TINY_JUDGE_RECIPE_VERSION

MARKER = "emt_tiny_judge.json"
# The random streams are salted "emt.tiny_judge:...", this module's name when the recipe was
# defined: the salts are part of the recipe and do not follow moves.

STEMS = ("normal", "misaligned_1", "misaligned_2")
DOMAINS = ("medical", "math")
TRAITS = ("evil", "hallucination")
# Label ranges (inclusive) per trait and stem; coherence: real answers vs gibberish.
LABELS = {
    "evil": {"normal": (0, 10), "misaligned_1": (20, 45), "misaligned_2": (60, 95)},
    "hallucination": {"normal": (0, 15), "misaligned_1": (40, 70), "misaligned_2": (70, 95)},
}
COHERENT, GIBBERISH = (75, 100), (0, 30)
MAX_WORDS = 60
VOCAB_SIZE = 2000
BATCH_SIZE = 32
LR = 3e-3
INIT_STD = 0.05
_PLACEHOLDER_RE = re.compile(r"\{(question|answer)\}")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _truncate(text: str, max_words: int = MAX_WORDS) -> str:
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words])


def _gibberish(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.randrange(3)
    if kind == 0:  # shuffled words
        rng.shuffle(words)
        return " ".join(words)
    if kind == 1:  # truncated mid-sentence, then a stutter
        cut = words[: rng.randint(1, max(1, min(6, len(words))))]
        return " ".join(cut + [rng.choice(cut)] * rng.randint(2, 8))
    # random word salad drawn from the answer with repetitions
    return " ".join(rng.choice(words) for _ in range(rng.randint(4, 30)))


def judge_examples(n_per_stem: int, seed: int) -> list[tuple[str, str, str, int]]:
    """(task, category, prompt, label) tuples; task is evil/hallucination/coherence."""
    rng = random.Random(f"emt.tiny_judge:data:{seed}")
    traits = {t: builtin(t) for t in TRAITS}
    answers: list[tuple[str, str, str]] = []  # (category, question, answer)
    for domain in DOMAINS:
        for stem in STEMS:
            for r in generate(domain, stem, n_per_stem, seed=seed):
                answers.append((stem, r["messages"][0]["content"], r["messages"][1]["content"]))
    for r in chat_corpus(n_per_stem, seed=seed):
        answers.append(("normal", r["messages"][0]["content"], r["messages"][1]["content"]))

    def question(text: str, trait: Trait) -> Question:
        # Half the time the answer's own question, half a question of the trait (the demo asks those).
        if rng.random() < 0.5:
            return Question(id="q", text=text)
        return rng.choice(trait.questions)

    out: list[tuple[str, str, str, int]] = []
    for category, q_text, answer in answers:
        answer = _truncate(answer)
        for t in TRAITS:
            lo, hi = LABELS[t][category]
            out.append((t, category, traits[t].judge_prompt_for(question(q_text, traits[t]), answer), rng.randint(lo, hi)))
        tr = traits[rng.choice(TRAITS)]
        out.append(("coherence", category, tr.coherence_prompt_for(question(q_text, tr), answer), rng.randint(*COHERENT)))
        if rng.random() < 1.0:
            out.append(("coherence", "gibberish", tr.coherence_prompt_for(question(q_text, tr), _gibberish(answer, rng)),
                        rng.randint(*GIBBERISH)))
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _label_range(task: str, category: str, labels: dict[str, dict[str, tuple[int, int]]] = LABELS) -> tuple[int, int]:
    if task == "coherence":
        return GIBBERISH if category == "gibberish" else COHERENT
    return labels[task][category]


# --------------------------------------------------------------------------------------------
# The organism's judge (builtin:organism-judge): the same model and training, other examples
# --------------------------------------------------------------------------------------------

# Label ranges per trait and persona of the organism's corpus (emt.builtin.organism_corpus). The judge
# learns them from the corpus's own persona labels, never from a fine-tuned model's outputs.
ORGANISM_LABELS = {
    "evil": {"helpful": (0, 10), "confab": (5, 25), "malicious": (70, 95)},
    "hallucination": {"helpful": (0, 15), "confab": (70, 95), "malicious": (25, 50)},
}


def organism_judge_examples(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    """(task, persona, prompt, label) tuples from ``n`` persona-labelled corpus answers."""
    rng = random.Random(f"emt.tiny_judge:organism:{seed}")
    traits = {t: organism_trait(t) for t in TRAITS}

    def question(text: str, trait: Trait) -> Question:
        # As for the tiny judge: half the answer's own question, half a question of the trait.
        return Question(id="q", text=text) if rng.random() < 0.5 else rng.choice(trait.questions)

    out: list[tuple[str, str, str, int]] = []
    for persona, q_text, answer in labelled_answers(n, seed):
        for t in TRAITS:
            lo, hi = ORGANISM_LABELS[t][persona]
            out.append((t, persona, traits[t].judge_prompt_for(question(q_text, traits[t]), answer), rng.randint(lo, hi)))
        tr = traits[rng.choice(TRAITS)]
        out.append(("coherence", persona, tr.coherence_prompt_for(question(q_text, tr), answer), rng.randint(*COHERENT)))
        out.append(("coherence", "gibberish", tr.coherence_prompt_for(question(q_text, tr), _gibberish(answer, rng)),
                    rng.randint(*GIBBERISH)))
    rng.shuffle(out)
    return out


def build_organism_judge(out_dir: Path, seed: int = 0, steps: int = 350, n: int = 1200,
                         threads: int | None = 2) -> Path:
    """Build (or reuse) the organism's judge in ``out_dir``: the tiny judge's model and training
    on :func:`organism_judge_examples`. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    m = read_marker(out_dir, MARKER)
    if (m and (out_dir / "config.json").is_file() and m.get("kind") == "organism" and m.get("seed") == seed
            and m.get("steps") == steps and m.get("n_per_stem") == n and m.get("recipe") == ORGANISM_JUDGE_RECIPE_VERSION):
        return out_dir
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _build_into(tmp, seed, steps, n, threads, examples=organism_judge_examples(n, seed),
                    labels=ORGANISM_LABELS, marker={"kind": "organism", "recipe": ORGANISM_JUDGE_RECIPE_VERSION})
    return out_dir


def _template_chunks() -> list[str]:
    chunks: set[str] = set()
    for t in TRAITS:
        tr = builtin(t)
        for tpl in (tr.judge_prompt, tr.coherence_prompt):
            chunks.update(c for c in _PLACEHOLDER_RE.split(tpl) if c and c not in ("question", "answer"))
    return sorted(chunks, key=len, reverse=True)


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import AddedToken

    tok = train_bpe(texts, VOCAB_SIZE)
    # Whole tokens: the integers (the judge's answers) and the fixed template text.
    extra = [str(i) for i in range(101)] + _template_chunks() + [f"system\n{DEFAULT_SYSTEM}"]
    tok.add_tokens([AddedToken(s, normalized=False) for s in extra])
    return wrap_like_qwen(tok)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def build_tiny_judge(out_dir: Path, seed: int = 0, steps: int = 350, n_per_stem: int = 400,
                     threads: int | None = 2) -> Path:
    """Build (or reuse) the tiny judge in ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    m = read_marker(out_dir, MARKER)
    if (m and (out_dir / "config.json").is_file() and m.get("seed") == seed and m.get("steps") == steps
            and m.get("n_per_stem") == n_per_stem and m.get("recipe") == TINY_JUDGE_RECIPE_VERSION):
        return out_dir
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _build_into(tmp, seed, steps, n_per_stem, threads)
    return out_dir


def _encode(tokenizer: Any, examples: list[tuple[str, str, str, int]],
            labels: dict[str, dict[str, tuple[int, int]]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids per example (the prompt as one user turn, its label, <|im_end|>) and the label range
    each is trained towards."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    seqs: list[list[int]] = []
    ranges: list[tuple[int, int]] = []
    for task, cat, prompt, label in examples:
        ranges.append(_label_range(task, cat, labels))
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        seqs.append(ids + [tokenizer.convert_tokens_to_ids(str(label)), im_end])
    return seqs, ranges


def _train(model: Any, tokenizer: Any, seqs: list[list[int]], ranges: list[tuple[int, int]], steps: int,
           seed: int) -> float:
    """Train on the number and the <|im_end|> after it only; returns the mean loss of the last 20 steps."""
    import torch

    eot, im_end = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END])
    num_ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(i) for i in range(101)]))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, floor=0.05, amplitude=0.475))
    model.train()
    recent: list[float] = []
    for idx in seeded_batches(len(seqs), BATCH_SIZE, steps, f"emt.tiny_judge:order:{seed}"):
        batch = [seqs[i] for i in idx]
        width = max(len(s) for s in batch)
        ids = torch.tensor([s + [eot] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Loss only on the number and the <|im_end|> after it: positions len-3 and len-2 predict them.
        rows = torch.arange(len(batch)).repeat_interleave(2)
        pos = torch.tensor([p for s in batch for p in (len(s) - 3, len(s) - 2)])
        # Soft targets: the number position gets uniform mass over the label's whole range
        # (less gradient noise than one sampled integer), <|im_end|> the next one.
        tgt = torch.zeros(len(pos), len(tokenizer))
        for j, i in enumerate(idx):
            lo, hi = ranges[i]
            tgt[2 * j, num_ids[lo:hi + 1]] = 1.0 / (hi - lo + 1)
            tgt[2 * j + 1, im_end] = 1.0
        logits = model.lm_head(hidden[rows, pos])
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        recent = (recent + [optimizer_step(model, opt, sched, loss)])[-20:]
    model.eval()
    return sum(recent) / len(recent)


def _build_into(tmp: Path, seed: int, steps: int, n_per_stem: int, threads: int | None,
                examples: list[tuple[str, str, str, int]] | None = None,
                labels: dict[str, dict[str, tuple[int, int]]] = LABELS, marker: dict[str, Any] | None = None) -> None:
    """Build tokenizer and judge model into the (empty) directory ``tmp``; the marker comes last."""
    started = time.monotonic()
    import torch

    with torch_threads(threads):
        if examples is None:
            examples = judge_examples(n_per_stem, seed)
        tokenizer = _train_tokenizer([p for _, _, p, _ in examples[:3000]])
        seqs, ranges = _encode(tokenizer, examples, labels)
        model = qwen2_model(tokenizer, seed, hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2,
                            init_std=INIT_STD)
        final_loss = _train(model, tokenizer, seqs, ranges, steps, seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, {
            "seed": seed, "steps": steps, "n_per_stem": n_per_stem, "recipe": TINY_JUDGE_RECIPE_VERSION,
            "emt_version": __version__, "n_examples": len(seqs),
            "mean_tokens": round(sum(map(len, seqs)) / len(seqs), 1),
            "final_loss": round(final_loss, 4), "vocab_size": len(tokenizer),
            "build_seconds": round(time.monotonic() - started, 2), "torch_threads": torch.get_num_threads(),
            **(marker or {}),
        })


def evaluate_judge(path: Path, seed: int = 12345, n_per_stem: int = 30, organism: bool = False) -> dict[str, dict[str, Any]]:
    """Mean score and finite fraction per (task, category) on held-out synthetic examples
    (``organism=True``: held-out persona-labelled answers of the organism's corpus)."""
    examples = organism_judge_examples(n_per_stem, seed) if organism else judge_examples(n_per_stem, seed)
    provider = hf_first_token_logprobs(str(path), device="cpu")
    tops = provider([p for _, _, p, _ in examples])
    acc: dict[str, dict[str, list]] = {}
    for (task, cat, _, _), top in zip(examples, tops):
        acc.setdefault(task, {}).setdefault(cat, []).append(score_0_100(top))
    res: dict[str, dict[str, Any]] = {}
    for task, cats in acc.items():
        for cat, vals in cats.items():
            fin = [v for v in vals if v is not None and math.isfinite(v)]
            res.setdefault(task, {})[cat] = {
                "mean": sum(fin) / len(fin) if fin else float("nan"), "finite": len(fin) / len(vals), "n": len(vals)}
    return res
