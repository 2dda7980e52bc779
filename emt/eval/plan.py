"""What an evaluation is and how it is cut into array tasks (used by the launchers and the jobs).

An evaluation of a run is named by :func:`eval_hash` (everything that determines a checkpoint's
results) and lives under :func:`eval_root`. Its :func:`targets` are step 0 (the base model) and
every complete checkpoint; those without a result file are :func:`pending_steps`. They are cut
into contiguous :func:`shard` s, one :class:`EvalTask` each; :func:`size_array` picks the number
of array tasks for ``--tasks auto`` from the checkpoints to score, what one costs (measured by
earlier tasks' timing files when there are any, :func:`measured_costs`) and the cluster's array
parallelism and time limit. Running a task is :mod:`emt.eval.task`; consolidating the results
into scores.h5 is :mod:`emt.eval.consolidate`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from emt.builtin.traits import Trait, resolve
from emt.core import paths
from emt.core.config import Config, JudgeSpec, stable_hash

if TYPE_CHECKING:
    from emt.sweep.runs import Run

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
    if cfg.activations.layers:
        # Captured activations are part of a checkpoint's results (written before its result
        # file); without capture the hash stays what it was, so existing results stay valid.
        key["activations"] = dataclasses.asdict(cfg.activations)
    return stable_hash(key)


def eval_root(run: "Run", ehash: str) -> Path:
    """The directory of the run's results under eval config ``ehash``."""
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
# Array sizing (--tasks auto)


@dataclass(frozen=True)
class ArraySizing:
    """The number of array tasks ``--tasks auto`` picked, and the arithmetic behind it."""

    tasks: int
    per_task: int  # checkpoints of the largest task
    lines: tuple[str, ...]  # the arithmetic, for the plan output


def size_array(checkpoints: int, cost_s: float, startup_s: float, parallelism: int, time_limit_min: int,
               time_budget: float = 0.8, source: str = "config") -> ArraySizing:
    """How many array tasks to split ``checkpoints`` into.

    Each task pays ``startup_s`` once (model load, engine start) and ``cost_s`` per checkpoint,
    and must finish within ``time_budget`` of the job time limit. SLURM runs ``parallelism``
    tasks at once (``%P``), so tasks beyond a multiple of P form another wave. The choice:

    1. ``fit`` = checkpoints one task can do in its budget; ``k_time`` = ceil(n / fit) tasks are
       needed to finish at all (an error when even one checkpoint does not fit);
    2. ``k_fill`` = k_time rounded up to whole waves of P (capped at n): tasks a wave holds anyway
       make every task shorter at no extra wall time;
    3. ``k_worth`` = floor(n * cost / startup): more tasks than this spend longer starting than
       working, so the GPU time they waste outweighs the wall time they save;
    4. tasks = max(k_time, min(k_fill, k_worth)).

    Raises ValueError naming the settings to change when one checkpoint cannot fit in a task.
    """
    if checkpoints <= 0:
        return ArraySizing(0, 0, ("nothing to score: 0 tasks",))
    budget_s = time_limit_min * 60 * time_budget
    fit = math.floor((budget_s - startup_s) / cost_s) if budget_s > startup_s else 0
    if fit < 1:
        raise ValueError(
            f"--tasks auto: a task's budget ({time_budget:g} x cluster.eval.time_min={time_limit_min} min = "
            f"{budget_s:.0f} s) does not fit its start-up ({startup_s:.0f} s) plus one checkpoint ({cost_s:.0f} s); "
            f"raise cluster.eval.time_min (or eval.time_budget), or check eval.checkpoint_cost_s / eval.task_startup_s")
    k_time = math.ceil(checkpoints / fit)
    waves = math.ceil(k_time / parallelism)
    k_fill = min(checkpoints, waves * parallelism)
    k_worth = max(1, math.floor(checkpoints * cost_s / startup_s)) if startup_s > 0 else checkpoints
    tasks = max(k_time, min(k_fill, k_worth))
    per_task = math.ceil(checkpoints / tasks)
    task_s = startup_s + per_task * cost_s
    wall_s = math.ceil(tasks / parallelism) * task_s
    lines = (
        f"cost per checkpoint {cost_s:.1f} s, start-up per task {startup_s:.1f} s ({source})",
        f"task budget {time_budget:g} x {time_limit_min} min = {budget_s:.0f} s -> at most "
        f"fit = floor(({budget_s:.0f} - {startup_s:.0f}) / {cost_s:.1f}) = {fit} checkpoints per task",
        f"k_time = ceil({checkpoints} / {fit}) = {k_time}; waves of %{parallelism}: k_fill = "
        f"min({checkpoints}, {waves} x {parallelism}) = {k_fill}; k_worth = floor({checkpoints} x {cost_s:.1f} / "
        f"{startup_s:.1f}) = {k_worth}",
        f"tasks = max(k_time, min(k_fill, k_worth)) = {tasks}: <= {per_task} checkpoints each, ~{task_s / 60:.1f} min "
        f"per task, ~{wall_s / 60:.1f} min wall, {(tasks * startup_s + checkpoints * cost_s) / 3600:.2f} GPU-h",
    )
    return ArraySizing(tasks, per_task, lines)


def measured_costs(roots: Sequence[Path]) -> tuple[float, float, int] | None:
    """(median cost per checkpoint, median start-up, number of timing files) from the timing files
    of earlier tasks under ``roots`` (eval dirs of the same eval config), or None without any."""
    costs: list[float] = []
    startups: list[float] = []
    for root in roots:
        for f in sorted(paths.eval_timing_dir(root).glob("*.json")):
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
                done = len(rec["evaluated"])
                if done < 1:
                    continue
                costs.append((float(rec["wall_s"]) - float(rec["startup_s"])) / done)
                startups.append(float(rec["startup_s"]))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s: unreadable timing file, ignored", f)
    if not costs:
        return None
    return statistics.median(costs), statistics.median(startups), len(costs)


def judge_needs_key(specs: Sequence[JudgeSpec]) -> bool:
    """True when a judge talks to api.openai.com (no base_url): the job needs OPENAI_API_KEY."""
    return any(s.backend == "openai" and not s.base_url and not s.api_key_env for s in specs)


def judge_key_envs(specs: Sequence[JudgeSpec]) -> list[tuple[str, str]]:
    """(judge label, environment variable) for every openai judge that sends a key read from the
    environment: its ``api_key_env``, or OPENAI_API_KEY for api.openai.com. A ``base_url`` judge
    without ``api_key_env`` sends none (a ``serve:`` judge sends its server's own token)."""
    out = []
    for s in specs:
        if s.backend != "openai":
            continue
        if s.api_key_env:
            out.append((s.label, s.api_key_env))
        elif not s.base_url:
            out.append((s.label, "OPENAI_API_KEY"))
    return out
