"""Evaluating checkpoints: what one eval array task does, and consolidation.

An eval task receives a shard of a run's checkpoints (step 0, the base model, is always among
the run's targets). For each checkpoint it generates answers to every trait's questions, has
every judge score each answer for its trait and for coherence, and writes one result file
atomically. A checkpoint whose result file exists is skipped, so a task that runs twice, is
requeued, or was killed mid-shard redoes only what is missing; when nothing is missing it loads
no model and calls no judge. Consolidation (one job after the whole array) turns the result
files into ``scores.h5`` (:mod:`emt.store`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emt import atomic, paths
from emt.config import BUILTIN_TINY_JUDGE, BUILTIN_TINY_MODEL, Config, JudgeSpec, stable_hash, to_yaml
from emt.logs import setup_logging

if TYPE_CHECKING:
    from emt.sweeps import Run
    from emt.traits import Trait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalTask:
    """One array task: a run and the steps of its shard (pickled into the job)."""

    run: "Run"
    steps: tuple[int, ...]
    task: int
    eval_hash: str


def load_traits(cfg: Config) -> list["Trait"]:
    """The configured traits, cut to ``eval.questions_per_trait`` questions each."""
    import dataclasses

    from emt.traits import resolve

    traits = resolve(list(cfg.eval.traits))
    n = cfg.eval.questions_per_trait
    return [dataclasses.replace(t, questions=t.questions[:n]) if n else t for t in traits]


def eval_hash(cfg: Config) -> str:
    """Short hash of everything that determines a checkpoint's eval results."""
    traits = [{"name": t.name, "questions": [(q.id, q.text, q.system, q.judge_prompt) for q in t.questions],
               "judge": t.judge_prompt, "coherence": t.coherence_prompt} for t in load_traits(cfg)]
    e = cfg.eval
    key = {"traits": traits, "samples": e.samples_per_question, "temperature": e.temperature,
           "max_new_tokens": e.max_new_tokens, "seed": e.seed, "backend": e.backend,
           "judges": [(j.backend, j.model, j.label, j.base_url) for j in cfg.judge.judges]}
    return stable_hash(key)


def eval_root(run: "Run", ehash: str) -> Path:
    return paths.eval_dir(run.path, ehash)


def targets(run: "Run") -> list[int]:
    """Steps to evaluate: 0 (the base model) and every complete checkpoint."""
    return [0] + [s for s, _ in paths.complete_checkpoints(run.path)]


def pending_steps(run: "Run", ehash: str) -> list[int]:
    """Targets without a result file yet."""
    root = eval_root(run, ehash)
    return [s for s in targets(run) if not paths.result_file(root, s).is_file()]


def shard(steps: Sequence[int], per_task: int | None = None, tasks: int | None = None) -> list[list[int]]:
    """Split steps into contiguous shards of ``per_task`` steps, or into ``tasks`` near-equal shards."""
    steps = list(steps)
    if not steps:
        return []
    if tasks:
        k = min(tasks, len(steps))
        size, extra = divmod(len(steps), k)
        out, i = [], 0
        for t in range(k):
            n = size + (1 if t < extra else 0)
            out.append(steps[i:i + n])
            i += n
        return out
    n = max(1, per_task or 1)
    return [steps[i:i + n] for i in range(0, len(steps), n)]


# ----------------------------------------------------------------------------------------------
# Judges and the generator, built inside the job


def _model_path(cfg: Config, name: str) -> str:
    """A judge or base model's path; builtin models are built on first use (atomically)."""
    if name == BUILTIN_TINY_MODEL:
        from emt.train import model_path

        return model_path(cfg)
    if name == BUILTIN_TINY_JUDGE:
        from emt.tiny_judge import build_tiny_judge

        return str(build_tiny_judge(paths.builtin_judge_dir(cfg.cluster.output_root)))
    return name


def prepare_builtin_judges(cfg: Config) -> None:
    """Build builtin judge models before jobs start, so parallel tasks do not each build one."""
    for spec in cfg.judge.judges:
        if spec.backend == "local" and spec.model == BUILTIN_TINY_JUDGE:
            _model_path(cfg, spec.model)


def make_judges(cfg: Config) -> list[Any]:
    """The configured judges, sharing the persistent cache under the output root."""
    from emt.judge import JudgeCache, LocalJudge, OpenAIJudge, hf_first_token_logprobs

    cache = JudgeCache(paths.judge_cache_file(cfg.cluster.output_root)) if cfg.judge.cache else None
    judges: list[Any] = []
    for spec in cfg.judge.judges:
        if spec.backend == "openai":
            judges.append(OpenAIJudge(model=spec.model, base_url=spec.base_url, max_concurrency=cfg.judge.max_concurrency,
                                      timeout_s=cfg.judge.timeout_s, max_retries=cfg.judge.max_retries,
                                      cache=cache, name=spec.label))
        else:
            path = _model_path(cfg, spec.model)
            if spec.local_backend == "vllm":
                from emt.generate import make_generator

                provider = make_generator("vllm", path).first_token_logprobs
            else:
                provider = hf_first_token_logprobs(path)
            judges.append(LocalJudge(provider, name=spec.label, model=spec.model, cache=cache))
    return judges


def conversations(traits: Sequence["Trait"]) -> list[tuple["Trait", Any, list[dict[str, str]]]]:
    """(trait, question, chat messages) for every question of every trait, in a fixed order."""
    out = []
    for t in traits:
        for q in t.questions:
            msgs = ([{"role": "system", "content": q.system}] if q.system else []) + [{"role": "user", "content": q.text}]
            out.append((t, q, msgs))
    return out


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def run_eval_task(task: EvalTask) -> dict[str, Any]:
    """Evaluate the shard's checkpoints that have no result yet; safe to run any number of times."""
    setup_logging()
    run, cfg = task.run, task.run.config
    root = eval_root(run, task.eval_hash)
    todo = [s for s in task.steps if not paths.result_file(root, s).is_file()]
    stats: dict[str, Any] = {"task": task.task, "steps": list(task.steps), "evaluated": [], "generations": 0, "judge_calls": 0}
    if not todo:
        log.info("%s task %d: all %d checkpoints already scored", run.name, task.task, len(task.steps))
        return stats
    available = {s for s in targets(run)}
    missing = [s for s in todo if s not in available]
    if missing:
        raise FileNotFoundError(f"{run.path}: no complete checkpoint for steps {missing}")

    from emt.generate import Target, adapter_rank, make_generator
    from emt.runtime import limit_torch_threads

    limit_torch_threads(cfg.cluster.eval.cpus)
    traits = load_traits(cfg)
    convs = conversations(traits)
    judges = make_judges(cfg)
    ckpts = dict(paths.complete_checkpoints(run.path))
    lora = cfg.training.method == "lora"
    rank = max((adapter_rank(str(ckpts[s])) for s in todo if s in ckpts), default=0) if lora else 0
    base = _model_path(cfg, cfg.model.name)
    engine = {"gpu_memory_utilization": cfg.eval.gpu_memory_utilization}
    if cfg.eval.max_model_len:
        engine["max_model_len"] = cfg.eval.max_model_len
    if cfg.eval.backend == "hf":
        engine = {"batch_size": cfg.eval.batch_size}
    gen = make_generator(cfg.eval.backend, base, max_lora_rank=rank, dtype=cfg.model.dtype, engine=engine)
    n = cfg.eval.samples_per_question
    try:
        for step in todo:
            t0 = time.time()
            if step == 0:
                target = Target(0)
            elif lora:
                target = Target(step, adapter=str(ckpts[step]))
            else:
                target = Target(step, model=str(ckpts[step]))
            answers = gen.generate(target, [c for _, _, c in convs], n, max_new_tokens=cfg.eval.max_new_tokens,
                                   temperature=cfg.eval.temperature, seed=cfg.eval.seed)
            stats["generations"] += len(convs) * n
            trait_prompts = [t.judge_prompt_for(q, a) for (t, q, _), ans in zip(convs, answers) for a in ans]
            coh_prompts = [t.coherence_prompt_for(q, a) for (t, q, _), ans in zip(convs, answers) for a in ans]
            result = _result(step, traits, convs, answers, judges, trait_prompts, coh_prompts, stats)
            result.update(run=run.name, run_hash=run.hash, eval_hash=task.eval_hash, seconds=round(time.time() - t0, 2))
            atomic.write_text(paths.result_file(root, step), json.dumps(result))
            stats["evaluated"].append(step)
            log.info("%s task %d: step %d scored (%d answers, %.1f s)", run.name, task.task, step,
                     len(trait_prompts), time.time() - t0)
    finally:
        gen.close()
    for j in judges:
        log.info("judge %s", j.format_usage())
    stats["usage"] = {j.name: j.usage() for j in judges}
    return stats


def _result(step: int, traits: Sequence["Trait"], convs: Sequence[Any], answers: list[list[str]],
            judges: Sequence[Any], trait_prompts: list[str], coh_prompts: list[str], stats: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint's result: per trait, answers and each judge's scores [question][sample]."""
    n = len(answers[0]) if answers else 0
    per_judge = {}
    for j in judges:
        js = j.score(trait_prompts + coh_prompts)
        stats["judge_calls"] += sum(1 for x in js if not x.cached)
        per_judge[j.name] = (js[: len(trait_prompts)], js[len(trait_prompts):])
    out: dict[str, Any] = {"step": step, "judges": [j.name for j in judges], "traits": {}}
    flat = 0
    row = 0
    for t in traits:
        q_n = len(t.questions)
        tr: dict[str, Any] = {"question_ids": [q.id for q in t.questions], "questions": [q.text for q in t.questions],
                              "responses": answers[row: row + q_n], "scores": {}, "coherence": {}, "raw": {}, "reason": {}}
        lo, hi = flat, flat + q_n * n
        for name, (ts, cs) in per_judge.items():
            grid = lambda xs: [xs[lo + i * n: lo + (i + 1) * n] for i in range(q_n)]  # noqa: E731
            tr["scores"][name] = [[_nan_if_none(x.score) for x in r] for r in grid(ts)]
            tr["coherence"][name] = [[_nan_if_none(x.score) for x in r] for r in grid(cs)]
            # Keep the raw reply and the reason wherever a score is missing (never a silent 0).
            tr["raw"][name] = [[x.raw if math.isnan(_nan_if_none(x.score)) else "" for x in r] for r in grid(ts)]
            tr["reason"][name] = [[(x.reason or "") if math.isnan(_nan_if_none(x.score)) else "" for x in r] for r in grid(ts)]
        out["traits"][t.name] = tr
        row += q_n
        flat = hi
    return out


# ----------------------------------------------------------------------------------------------
# Consolidation


def consolidate_run(run: "Run", ehash: str) -> dict[str, Any]:
    """Write the run's scores.h5 from every target's result (fails, touching nothing, if any is missing)."""
    from emt.provenance import collect
    from emt.store import ConsolidationError, consolidate

    setup_logging()
    root = eval_root(run, ehash)
    steps = targets(run)
    missing = [s for s in steps if not paths.result_file(root, s).is_file()]
    if missing:
        raise ConsolidationError(f"{root}: {len(missing)} checkpoint(s) not scored yet (steps {missing[:10]}"
                                 f"{'...' if len(missing) > 10 else ''}); rerun launch/eval_array.py --run {run.name}")
    results = [paths.result_file(root, s) for s in steps]
    if _up_to_date(paths.scores_file(run.path), ehash, steps, results):
        log.info("%s: scores.h5 is up to date", run.name)
        return {"run": run.name, "scores": str(paths.scores_file(run.path)), "checkpoints": len(steps), "skipped": True}
    losses: dict[int, tuple[float | None, float | None]] = {}
    s0 = paths.step0_file(run.path)
    if s0.is_file():
        losses[0] = (None, json.loads(s0.read_text()).get("heldout_loss"))
    for s, ckpt in paths.complete_checkpoints(run.path):
        m = json.loads(paths.checkpoint_marker(ckpt).read_text())
        losses[s] = (m.get("train_loss"), m.get("heldout_loss"))
    prov = collect(run.hash)
    attrs = {"config": to_yaml(run.config), "config_hash": run.hash, "eval_hash": ehash, "run": run.name,
             "git_commit": prov["git"]["commit"] or "", "git_dirty": bool(prov["git"]["dirty"]),
             "model": run.config.model.name, "packages": prov["packages"]}
    out = consolidate(results, paths.scores_file(run.path), attrs, losses)
    log.info("%s: consolidated %d checkpoints into %s", run.name, len(steps), out)
    return {"run": run.name, "scores": str(out), "checkpoints": len(steps)}


def scores_up_to_date(run: "Run", ehash: str) -> bool:
    """True when the run's scores.h5 holds exactly its current results."""
    steps = targets(run)
    results = [paths.result_file(eval_root(run, ehash), s) for s in steps]
    return all(p.is_file() for p in results) and _up_to_date(paths.scores_file(run.path), ehash, steps, results)


def _up_to_date(scores: Path, ehash: str, steps: Sequence[int], results: Sequence[Path]) -> bool:
    """True when scores.h5 already holds exactly these results (a rerun rewrites nothing)."""
    if not scores.is_file():
        return False
    import h5py

    try:
        with h5py.File(scores, "r") as h5:
            same = h5.attrs.get("eval_hash") == ehash and h5["steps"][()].tolist() == list(steps)
    except (OSError, KeyError):
        return False
    return same and scores.stat().st_mtime >= max(p.stat().st_mtime for p in results)


def judge_needs_key(specs: Sequence[JudgeSpec]) -> bool:
    """True when a judge talks to api.openai.com (no base_url): the job needs OPENAI_API_KEY."""
    return any(s.backend == "openai" and not s.base_url for s in specs)
