"""Persona vectors: a judge-free direction per trait, and its projection at every checkpoint.

For a trait with (pos, neg) system-prompt pairs (the persona_vectors JSON ``instruction`` field,
or the project's own pairs in ``emt/trait_data``), the base model answers each question under
both system prompts; a (pos, neg) answer pair is kept when the judge confirms it (pos trait
score >= 50, neg < 50, both coherence >= 50); the persona vector of each layer is
mean(pos response activations) - mean(neg response activations) over the kept pairs. At every
checkpoint the projection of the response activations onto the unit vector (per answer and
mean) and of their shift from step 0 are a trait signal that needs no judge.

The vector math is :mod:`emt.analysis.persona`. Layers follow :mod:`emt.eval.capture`
(``hidden_states`` indices; 0 = embeddings).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from emt.analysis.persona import confirmed_pairs, persona_vector
from emt.core import atomic, paths
from emt.core.locks import locked
from emt.eval.capture import capture
from emt.eval.generate import Target
from emt.store.activations import load_step, save_step

log = logging.getLogger(__name__)

def persona_conversations(trait: Any, max_questions: int | None = None) -> list[tuple[int, int, str, list[dict[str, str]]]]:
    """(instruction index, question index, side, conversation) for every pos/neg system prompt x question."""
    qs = list(trait.questions)[: max_questions or None]
    out = []
    for i, (pos, neg) in enumerate(trait.instructions):
        for j, q in enumerate(qs):
            for side, sysmsg in (("pos", pos), ("neg", neg)):
                out.append((i, j, side, [{"role": "system", "content": sysmsg}, {"role": "user", "content": q.text}]))
    return out


def build(
    trait: Any, generator: Any, judge: Any, response_acts: Callable[[list[Any], list[str]], np.ndarray],
    layers: Sequence[int], samples: int = 2, max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0,
    max_questions: int | None = None,
) -> dict[str, Any]:
    """Build one trait's persona vector on the base model (step 0).

    ``generator`` is an :mod:`emt.eval.generate` generator (its base model answers), ``judge`` an
    :mod:`emt.eval.judge` judge (its ``score`` takes judge prompts), ``response_acts(conversations,
    answers)`` returns the base model's response-mean activations [answers, L, H] (e.g.
    :func:`emt.eval.capture.capture` on a transformers copy of the base). Generation and judging
    come first, then the activations, so a generator that shares the model is not disturbed.
    Returns ``{"vector" [L, H], "layers", "kept", "pairs", "pos_trait", "neg_trait"}``.
    """
    if not trait.instructions:
        raise ValueError(f"trait {trait.name!r} has no (pos, neg) instruction pairs; persona vectors need them "
                         f"(the persona_vectors JSON 'instruction' field)")
    convs = persona_conversations(trait, max_questions)
    answers = generator.generate(Target(0), [c for *_, c in convs], samples, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed)
    qs = list(trait.questions)
    flat = [(meta, a) for meta, ans in zip(convs, answers) for a in ans]
    trait_prompts = [trait.judge_prompt_for(qs[j], a) for (_, j, _, _), a in flat]
    coh_prompts = [trait.coherence_prompt_for(qs[j], a) for (_, j, _, _), a in flat]
    scored = judge.score(trait_prompts + coh_prompts)

    def val(x: Any) -> float:
        return math.nan if x.score is None else float(x.score)

    ts = np.array([val(x) for x in scored[: len(flat)]])
    cs = np.array([val(x) for x in scored[len(flat):]])
    acts = np.asarray(response_acts([c for (_, _, _, c), _ in flat], [a for _, a in flat]))
    # convs alternate pos, neg for each (instruction, question); each has `samples` answers
    n_pairs = len(convs) // 2
    shape = (n_pairs, 2, samples)
    ts, cs = ts.reshape(shape), cs.reshape(shape)
    a = acts.reshape(n_pairs, 2, samples, *acts.shape[1:])
    keep = confirmed_pairs(ts[:, 0], ts[:, 1], cs[:, 0], cs[:, 1]).reshape(-1)
    pos = a[:, 0].reshape(-1, *acts.shape[1:])
    neg = a[:, 1].reshape(-1, *acts.shape[1:])
    vec = persona_vector(pos, neg, keep)
    log.info("persona vector %s: %d of %d (pos, neg) answer pairs confirmed by the judge", trait.name,
             int(keep.sum()), keep.size)
    return {"vector": vec, "layers": list(layers), "kept": int(keep.sum()), "pairs": int(keep.size),
            "pos_trait": float(np.nanmean(ts[:, 0])), "neg_trait": float(np.nanmean(ts[:, 1]))}


def save(path: Path, result: dict[str, Any]) -> None:
    """Write a persona vector (float32) and its metadata atomically."""
    meta = {k: v for k, v in result.items() if k != "vector"}
    save_step(path, {"vector": result["vector"]}, dtype="float32", meta=meta)


def load(path: Path) -> dict[str, Any]:
    """A persona vector written by :func:`save`: ``{"vector", ...metadata}``."""
    arrays, meta = load_step(path)
    return {"vector": arrays["vector"].astype(np.float64), **meta}


def ensure_vectors(cfg: Any, eval_root: Path, traits: Sequence[Any], generator: Any, judge: Any, capturer: Any) -> dict[str, Path]:
    """Build and save the persona vector of every trait that has instruction pairs and none yet.

    Run by the eval task that evaluates step 0, so the vectors exist before consolidation (which
    projects every checkpoint's answers on them). A trait without pairs is skipped with a log
    line; a trait whose pairs the judge never confirms is skipped with a warning (no vector is
    better than a vector of noise), and the run's other results are unaffected; either way the
    reason is recorded beside the vector's file (:func:`skipped_file`) for the report. Built under the
    evaluation's persona lock: a second process waits and then finds the vectors (built once).
    """
    with locked(paths.persona_lock(eval_root)):
        return _build_missing(cfg, eval_root, traits, generator, judge, capturer)


def _build_missing(cfg: Any, eval_root: Path, traits: Sequence[Any], generator: Any, judge: Any, capturer: Any) -> dict[str, Path]:
    """:func:`ensure_vectors` with its lock held."""
    a = cfg.activations
    out: dict[str, Path] = {}
    for t in traits:
        f = paths.persona_file(eval_root, t.name)
        if f.is_file():
            out[t.name] = f
            continue
        if not t.instructions:
            log.info("persona vector %s: the trait has no (pos, neg) instruction pairs; skipped", t.name)
            record_skipped(f, "the trait has no (pos, neg) instruction pairs")
            continue

        def acts(convs: list[Any], answers: list[str]) -> np.ndarray:
            with capturer.model_for(Target(0)) as m:
                return capture(m, capturer.tokenizer, convs, answers, a.layers, a.batch_size)["response_mean"]

        try:
            res = build(t, generator, judge, acts, a.layers, samples=a.persona_samples,
                        max_new_tokens=a.persona_max_new_tokens, temperature=cfg.eval.temperature,
                        seed=cfg.eval.seed, max_questions=a.persona_questions)
        except ValueError as exc:
            log.warning("persona vector %s not built: %s", t.name, exc)
            record_skipped(f, str(exc))
            continue
        save(f, res)
        skipped_file(f).unlink(missing_ok=True)  # a later build succeeded: the old reason no longer holds
        out[t.name] = f
    return out


def skipped_file(vector_file: Path) -> Path:
    """Where the reason a persona vector was not built is kept: ``persona-<trait>.skipped.json``
    beside the vector file it stands in for, so consolidation (and the report) can say why."""
    return vector_file.with_name(vector_file.stem + ".skipped.json")


def record_skipped(vector_file: Path, reason: str) -> None:
    """Record (atomically) why the persona vector ``vector_file`` was not built."""
    atomic.write_json(skipped_file(vector_file), {"reason": reason})


def skipped_reasons(eval_root: Path, traits: Sequence[str]) -> dict[str, str]:
    """{trait: reason} for each of ``traits`` whose persona vector was not built and a reason was
    recorded (:func:`record_skipped`); a trait with a vector, or with neither file, is left out.
    An unreadable record still counts, its reason saying so."""
    out: dict[str, str] = {}
    for t in traits:
        f = paths.persona_file(eval_root, t)
        rec = skipped_file(f)
        if f.is_file() or not rec.is_file():
            continue
        try:
            out[t] = str(json.loads(rec.read_text())["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            out[t] = f"not built (the record {rec.name} is unreadable)"
    return out
