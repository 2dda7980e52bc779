"""Evaluating checkpoints: what one eval array task does, and consolidation.

An eval task receives a shard of a run's checkpoints (step 0, the base model, is always among
the run's targets). For each checkpoint it generates answers to every trait's questions, has
every judge score each answer for its trait and for coherence, and writes one result file
atomically. A checkpoint whose result file exists is skipped, so a task that runs twice, is
requeued, or was killed mid-shard redoes only what is missing; when nothing is missing it loads
no model and calls no judge. Consolidation (one job after the whole array) turns the result
files into ``scores.h5`` (:mod:`emt.store`).

Within a task, one generator (one vLLM engine) serves every checkpoint of the shard, and the
judges run behind it (:class:`JudgePipeline`): checkpoint i is scored while checkpoint i+1
generates, with the same results as scoring in line. :func:`size_array` picks the number of
array tasks for ``--tasks auto`` from the checkpoints to score, what one costs (measured by
earlier tasks' timing files when there are any) and the cluster's array parallelism and time
limit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from emt import atomic, paths
from emt.config import (BUILTIN_ORGANISM, BUILTIN_ORGANISM_JUDGE, BUILTIN_TINY_JUDGE, BUILTIN_TINY_MODEL, Config,
                        JudgeSpec, stable_hash, to_yaml)
from emt.locks import StepLocks
from emt.logs import setup_logging

if TYPE_CHECKING:
    from emt.sweeps import Run
    from emt.traits import Trait

log = logging.getLogger(__name__)

SERVE_PREFIX = "serve:"  # judge base_url naming a judge.servers entry (launch/judge_serve.py)


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
    if cfg.activations.layers:
        # Captured activations are part of a checkpoint's results (written before its result
        # file); without capture the hash stays what it was, so existing results stay valid.
        import dataclasses

        key["activations"] = dataclasses.asdict(cfg.activations)
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
    import statistics

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


# ----------------------------------------------------------------------------------------------
# Judges and the generator, built inside the job


def _model_path(cfg: Config, name: str) -> str:
    """A judge or base model's path; builtin models are built on first use (atomically)."""
    if name == BUILTIN_TINY_MODEL:
        from emt.train import model_path

        return model_path(cfg)
    if name == BUILTIN_ORGANISM:
        from emt.organism import build_organism
        from emt.train import model_path

        return str(build_organism(Path(model_path(cfg)), seed=cfg.model.tiny_seed,
                                  pretrain_steps=cfg.model.tiny_pretrain_steps))
    if name == BUILTIN_TINY_JUDGE:
        from emt.tiny_judge import build_tiny_judge

        return str(build_tiny_judge(paths.builtin_judge_dir(cfg.cluster.output_root)))
    if name == BUILTIN_ORGANISM_JUDGE:
        from emt.tiny_judge import build_organism_judge

        return str(build_organism_judge(paths.organism_judge_dir(cfg.cluster.output_root)))
    return name


def prepare_builtin_judges(cfg: Config) -> None:
    """Build builtin judge models before jobs start, so parallel tasks do not each build one."""
    for spec in cfg.judge.judges:
        if spec.backend == "local" and spec.model in (BUILTIN_TINY_JUDGE, BUILTIN_ORGANISM_JUDGE):
            _model_path(cfg, spec.model)


def make_judges(cfg: Config) -> list[Any]:
    """The configured judges, sharing the persistent cache under the output root.

    A ``base_url`` of ``serve:<name>`` is resolved here, in the job, from the endpoint file that
    the serve job of ``judge.servers[name]`` writes (waiting up to ``judge.serve_wait_s`` for it).
    """
    from emt.judge import JudgeCache, LocalJudge, OpenAIJudge, hf_first_token_logprobs

    cache = JudgeCache(paths.judge_cache_file(cfg.cluster.output_root)) if cfg.judge.cache else None
    judges: list[Any] = []
    for spec in cfg.judge.judges:
        if spec.backend == "openai":
            base_url, token = spec.base_url, None
            if base_url and base_url.startswith(SERVE_PREFIX):
                from emt.serve import resolve_server

                # The served judge's token comes from its endpoint file and goes to that server only.
                base_url, token = resolve_server(cfg.cluster.output_root, base_url[len(SERVE_PREFIX):],
                                                 wait_s=cfg.judge.serve_wait_s)
            judges.append(OpenAIJudge(model=spec.model, base_url=base_url, max_concurrency=cfg.judge.max_concurrency,
                                      timeout_s=cfg.judge.timeout_s, max_retries=cfg.judge.max_retries,
                                      cache=cache, name=spec.label, api_key_env=spec.api_key_env,
                                      api_key=None if spec.api_key_env else token))
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


# ----------------------------------------------------------------------------------------------
# One eval task: generation, with the judge pipelined behind it


@dataclass
class _Generated:
    """One checkpoint's answers, handed from generation to the judge."""

    step: int
    answers: list[list[str]]
    gen_seconds: float


class JudgePipeline:
    """Scores generated checkpoints and writes their result files, behind the generation.

    ``threaded``: a worker thread judges checkpoint i while the caller generates i+1 (judging is
    network-bound for API judges, and a local judge's forward passes release the GIL); at most
    ``depth`` generated checkpoints wait, so memory stays bounded and a slow judge throttles
    generation. Not threaded: :meth:`submit` judges and writes before returning (the sequential
    path). Both run the same ``handle`` on the same inputs, so their results are identical.

    The worker's first exception stops it; :meth:`submit` and :meth:`close` re-raise it. A
    checkpoint whose result was written stays written (reruns skip it).
    """

    def __init__(self, handle: Callable[[_Generated], None], *, threaded: bool, depth: int = 2) -> None:
        import queue

        self._handle = handle
        self._threaded = threaded
        self._queue: "queue.Queue[_Generated | None]" = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.wait_s = 0.0  # time the caller spent blocked on the judge (queue full, or the final drain)
        if threaded:
            self._thread = threading.Thread(target=self._work, name="emt-judge-pipeline", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so that the producer never blocks on a dead worker
            try:
                self._handle(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: _Generated) -> None:
        """Hand one generated checkpoint to the judge (blocks while ``depth`` are waiting)."""
        self._raise()
        if not self._threaded:
            self._handle(item)
            return
        t0 = time.perf_counter()
        self._queue.put(item)
        self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        """Wait until every submitted checkpoint is judged and written; re-raise a worker error."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self.wait_s += time.perf_counter() - t0
        self._raise()


def _task_id(task: EvalTask) -> str:
    """A name for this task's timing file: the SLURM array task when there is one."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    if os.environ.get("SLURM_JOB_ID"):
        return os.environ["SLURM_JOB_ID"]
    return f"task{task.task}-{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def _score_all(judges: Sequence[Any], prompts: list[str]) -> list[list[Any]]:
    """Every judge's judgements of ``prompts``, the judges running concurrently (an API judge's
    requests overlap a local judge's forward passes); the same judgements as one after another."""
    import asyncio

    async def gather() -> list[list[Any]]:
        return list(await asyncio.gather(*(j.ascore(prompts) for j in judges)))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    # Inside a running loop (a notebook): run ours in a worker thread, as _JudgeBase.score does.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emt-judges") as ex:
        return ex.submit(lambda: asyncio.run(gather())).result()


class EvalSession:
    """What an eval task loads once and uses for every checkpoint of its shard: the traits and
    their conversations, the judges, the generator (one vLLM engine or one transformers model)
    and, with ``activations.layers`` set, the activation capturer.

    :func:`run_eval_task` makes one per task; the monitor (:func:`emt.monitor.follow`) keeps one
    across its rounds, so following a run loads the model once instead of once per round.
    ``max_lora_rank`` must cover every adapter it will serve (a run's adapters share one rank).
    """

    def __init__(self, run: "Run", max_lora_rank: int = 0) -> None:
        from emt.generate import make_generator, vllm_engine_args
        from emt.runtime import limit_torch_threads

        t0 = time.perf_counter()
        cfg = run.config
        limit_torch_threads(cfg.cluster.eval.cpus)
        self.traits = load_traits(cfg)
        self.convs = conversations(self.traits)
        self.judges = make_judges(cfg)
        self.lora = cfg.training.method == "lora"
        self.rank = max_lora_rank
        base = _model_path(cfg, cfg.model.name)
        if cfg.eval.backend == "hf":
            engine: dict[str, Any] = {"batch_size": cfg.eval.batch_size}
            self.per_call = 1
        else:
            engine = vllm_engine_args(cfg.eval.vllm)
            self.per_call = cfg.eval.vllm.checkpoints_per_call if self.lora else 1  # whole models: one engine each
        self.gen = make_generator(cfg.eval.backend, base, max_lora_rank=max_lora_rank, dtype=cfg.model.dtype,
                                  engine=engine)
        self.capturer: Any = None
        try:
            if cfg.activations.layers:
                from emt.activations import StepCapturer

                self.capturer = StepCapturer(cfg, run, self.gen, base)
        except BaseException:
            self.gen.close()
            raise
        self.startup_s = time.perf_counter() - t0

    def close(self) -> None:
        """Free the generator and the capturer's model (idempotent)."""
        if self.capturer is not None:
            self.capturer.close()
            self.capturer = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None


def _needed_rank(run: "Run", steps: Sequence[int]) -> int:
    """The largest LoRA rank among the adapters of ``steps`` (0 for full fine-tuning)."""
    from emt.generate import adapter_rank

    if run.config.training.method != "lora":
        return 0
    ckpts = dict(paths.complete_checkpoints(run.path))
    return max((adapter_rank(str(ckpts[s])) for s in steps if s in ckpts), default=0)


def run_eval_task(task: EvalTask, session: EvalSession | None = None) -> dict[str, Any]:
    """Evaluate the shard's checkpoints that have no result yet; safe to run any number of times.

    Checkpoints are generated ``eval.vllm.checkpoints_per_call`` at a time (vllm; one at a time
    with hf) through one generator; each generated checkpoint goes to a :class:`JudgePipeline`
    that scores it with every judge and writes its result file atomically, while the next one
    generates (``eval.pipeline_judge``). With ``activations.layers`` set, each checkpoint's
    activations are captured after its generation and written (``step-N.act.npz``) before its
    result, so a result file implies its activations; the task that evaluates step 0 first builds
    the persona vectors (:func:`emt.persona.ensure_vectors`). A timing file records what the task
    spent where. ``session``: a loaded :class:`EvalSession` to reuse (the caller closes it);
    without one the task makes its own.
    """
    setup_logging()
    t_start = time.perf_counter()
    run, cfg = task.run, task.run.config
    root = eval_root(run, task.eval_hash)
    todo = [s for s in task.steps if not paths.result_file(root, s).is_file()]
    stats: dict[str, Any] = {"task": task.task, "steps": list(task.steps), "evaluated": [], "generations": 0, "judge_calls": 0}
    # A step is evaluated only under its lock (another launch of this eval, or the monitor, may be
    # at it): steps held elsewhere are waited for and their results used, never generated twice.
    steplocks = StepLocks(lambda s: paths.eval_step_lock(root, s), lambda s: paths.result_file(root, s).is_file())
    todo = steplocks.unless_all_busy(todo)
    if not todo:
        log.info("%s task %d: all %d checkpoints already scored", run.name, task.task, len(task.steps))
        return stats
    available = {s for s in targets(run)}
    missing = [s for s in todo if s not in available]
    if missing:
        raise FileNotFoundError(f"{run.path}: no complete checkpoint for steps {missing}")

    from emt.activations import save_step
    from emt.generate import Target, generate_many
    from emt.judge import request_tags

    ckpts = dict(paths.complete_checkpoints(run.path))
    own = session is None
    rank = _needed_rank(run, todo)
    if session is None:
        session = EvalSession(run, rank)
    elif session.lora and rank > session.rank:
        raise ValueError(f"{run.name}: an adapter of rank {rank} exceeds the session's max_lora_rank {session.rank}")
    startup_s = session.startup_s if own else 0.0
    traits, convs, judges, gen, capturer = session.traits, session.convs, session.judges, session.gen, session.capturer
    n = cfg.eval.samples_per_question
    timing: dict[str, Any] = {"gen_s": 0.0, "judge_s": 0.0, "act_s": 0.0}
    lock = threading.Lock()
    incomplete: dict[int, dict[str, Any]] = {}  # step -> judge_failed of results set aside
    # Steps whose judge failed last time: their answers are judged again, not regenerated (the
    # same prompts, so the cache answers every judgement that succeeded).
    stored = {s: a for s in todo if (a := _stored_answers(paths.judge_failed_file(root, s), traits)) is not None}

    def target_for(step: int) -> "Target":
        if step == 0:
            return Target(0)
        return Target(step, adapter=str(ckpts[step])) if session.lora else Target(step, model=str(ckpts[step]))

    def judge_and_write(item: _Generated) -> None:
        # Runs in the judge worker (or inline): score, then write the result file atomically.
        t0 = time.perf_counter()
        trait_prompts = [t.judge_prompt_for(q, a) for (t, q, _), ans in zip(convs, item.answers) for a in ans]
        coh_prompts = [t.coherence_prompt_for(q, a) for (t, q, _), ans in zip(convs, item.answers) for a in ans]
        with request_tags(run=run.name, step=item.step):
            result, calls = _result(item.step, traits, convs, item.answers, judges, trait_prompts, coh_prompts)
        judge_s = time.perf_counter() - t0
        result.update(run=run.name, run_hash=run.hash, eval_hash=task.eval_hash,
                      seconds=round(item.gen_seconds + judge_s, 2), gen_seconds=round(item.gen_seconds, 2),
                      judge_seconds=round(judge_s, 2))
        aside = paths.judge_failed_file(root, item.step)
        if result.get("judge_failed"):
            # Judgements lost in transport (after every retry): not a result, so the step stays
            # pending; the answers are kept so that a rerun asks only the failed prompts again.
            atomic.write_text(aside, json.dumps(result))
            steplocks.release(item.step)
            with lock:
                stats["judge_calls"] += calls
                incomplete[item.step] = result["judge_failed"]
                timing["judge_s"] += judge_s
            log.warning("%s task %d: step %d NOT scored: %s", run.name, task.task, item.step,
                        _failed_summary(result["judge_failed"]))
            return
        atomic.write_text(paths.result_file(root, item.step), json.dumps(result))
        if aside.exists():
            aside.unlink()
        steplocks.release(item.step)
        with lock:
            stats["judge_calls"] += calls
            stats["evaluated"].append(item.step)
            timing["judge_s"] += judge_s
        log.info("%s task %d: step %d scored (%d answers; generation %.1f s, judges %.1f s)", run.name, task.task,
                 item.step, len(trait_prompts), item.gen_seconds, judge_s)

    try:
        pipeline = JudgePipeline(judge_and_write, threaded=cfg.eval.pipeline_judge, depth=cfg.eval.judge_queue)
        try:
            pending = list(todo)
            while pending:
                # This round: the steps whose lock this task took. Every one of them is handed to the
                # judge (which releases it) before waiting for the others' holders, so no two tasks
                # ever wait on each other; what a holder leaves unscored (it failed, or was killed) is
                # claimed in the next round.
                mine, pending = steplocks.claim(pending)
                stored.update({s: a for s in mine if s not in stored
                               and (a := _stored_answers(paths.judge_failed_file(root, s), traits)) is not None})
                if capturer is not None and cfg.activations.persona and 0 in mine:
                    # Before step 0's result exists, so that a complete set of results implies the vectors.
                    from emt.persona import ensure_vectors

                    t0 = time.perf_counter()
                    ensure_vectors(cfg, root, traits, gen, judges[0], capturer)
                    timing["persona_s"] = time.perf_counter() - t0
                for step, answers in stored.items():
                    if step in mine and (capturer is None or paths.activation_file(root, step).is_file()):
                        pipeline.submit(_Generated(step, answers, 0.0))
                regen = [s for s in mine if s not in stored
                         or (capturer is not None and not paths.activation_file(root, s).is_file())]
                for i in range(0, len(regen), session.per_call):
                    group = regen[i:i + session.per_call]
                    t0 = time.perf_counter()
                    outs = generate_many(gen, [target_for(s) for s in group], [c for _, _, c in convs], n,
                                         max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature,
                                         seed=cfg.eval.seed)
                    gen_s = time.perf_counter() - t0
                    timing["gen_s"] += gen_s
                    stats["generations"] += len(group) * len(convs) * n
                    for step, answers in zip(group, outs):
                        if capturer is not None:
                            t1 = time.perf_counter()
                            arrays, meta = capturer.capture(target_for(step), traits, convs, answers)
                            save_step(paths.activation_file(root, step), arrays, dtype=cfg.activations.dtype, meta=meta)
                            timing["act_s"] += time.perf_counter() - t1
                        pipeline.submit(_Generated(step, answers, gen_s / len(group)))
                steplocks.wait_idle(pending)
        finally:
            # Checkpoints already generated are judged and written even when a later one failed
            # to generate (a rerun then skips them); a judge error surfaces here.
            pipeline.close()
    finally:
        steplocks.release_all()  # steps that failed to generate or judge: free for the next try
        if own:
            session.close()
    wall_s = time.perf_counter() - t_start
    for j in judges:
        log.info("judge %s", j.format_usage())
    stats["usage"] = {j.name: j.usage() for j in judges}
    record = {"task": task.task, "steps": list(task.steps), "evaluated": sorted(stats["evaluated"]),
              "backend": cfg.eval.backend, "pipeline_judge": cfg.eval.pipeline_judge,
              "checkpoints_per_call": session.per_call,
              "startup_s": round(startup_s, 3), "wall_s": round(wall_s, 3), "gen_s": round(timing["gen_s"], 3),
              "judge_s": round(timing["judge_s"], 3), "judge_wait_s": round(pipeline.wait_s, 3),
              "activations_s": round(timing["act_s"], 3), "persona_s": round(timing.get("persona_s", 0.0), 3),
              "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic.write_json(paths.eval_timing_file(root, _task_id(task)), record)
    stats["timing"] = record
    log.info("%s task %d: %d checkpoints in %.1f s (start-up %.1f s, generation %.1f s, judges %.1f s, "
             "activations %.1f s, waited for judges %.1f s)", run.name, task.task, len(stats["evaluated"]), wall_s,
             startup_s, timing["gen_s"], timing["judge_s"], timing["act_s"], pipeline.wait_s)
    if incomplete:
        from emt.judge import JudgeIncomplete

        merged: dict[str, dict[str, Any]] = {}
        for failed in incomplete.values():
            for judge, f in failed.items():
                m = merged.setdefault(judge, {"count": 0, "reasons": {}})
                m["count"] += f["count"]
                for reason, k in f["reasons"].items():
                    m["reasons"][reason] = m["reasons"].get(reason, 0) + k
        raise JudgeIncomplete(
            f"{run.name} task {task.task}: judge failed on steps {sorted(incomplete)}: {_failed_summary(merged)}; "
            f"those steps are not scored (their answers are kept): rerun launch/eval_array.py --run {run.name} once "
            f"the judge answers, and only the failed prompts are asked again")
    return stats


def _failed_summary(failed: dict[str, dict[str, Any]]) -> str:
    """``judge X: 12 judgements failed (http 500 after 6 retries x10, timeout after 6 retries x2)``."""
    parts = []
    for judge, f in failed.items():
        reasons = sorted(f["reasons"].items(), key=lambda kv: -kv[1])
        parts.append(f"judge {judge}: {f['count']} judgement(s) failed ("
                     + ", ".join(f"{r} x{k}" for r, k in reasons[:4]) + ")")
    return "; ".join(parts)


def _stored_answers(path: Path, traits: Sequence["Trait"]) -> list[list[str]] | None:
    """The answers of a set-aside result, in :func:`conversations` order, or None when the file is
    absent or does not match the traits' questions (they are generated again then)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        answers: list[list[str]] = []
        for t in traits:
            tr = data["traits"][t.name]
            if tr["question_ids"] != [q.id for q in t.questions]:
                return None
            answers += [list(map(str, row)) for row in tr["responses"]]
        return answers
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable set-aside result; its checkpoint is generated again", path)
        return None


def _result(step: int, traits: Sequence["Trait"], convs: Sequence[Any], answers: list[list[str]],
            judges: Sequence[Any], trait_prompts: list[str], coh_prompts: list[str]) -> tuple[dict[str, Any], int]:
    """One checkpoint's result (per trait, answers and each judge's scores [question][sample])
    and the number of judge calls it cost (cache hits excluded).

    Wherever a score (trait or coherence) is NaN its raw reply and reason are kept. Judgements
    lost in transport after every retry are counted per judge under ``judge_failed`` (count and
    reasons): such a result is incomplete."""
    n = len(answers[0]) if answers else 0
    per_judge = {}
    calls = 0
    failed: dict[str, dict[str, Any]] = {}
    for j, js in zip(judges, _score_all(judges, trait_prompts + coh_prompts)):
        calls += sum(1 for x in js if not x.cached)
        per_judge[j.name] = (js[: len(trait_prompts)], js[len(trait_prompts):])
        for x in js:
            if getattr(x, "failed", False):
                f = failed.setdefault(j.name, {"count": 0, "reasons": {}})
                f["count"] += 1
                f["reasons"][x.reason or "?"] = f["reasons"].get(x.reason or "?", 0) + 1
    out: dict[str, Any] = {"step": step, "judges": [j.name for j in judges], "traits": {}}
    if failed:
        out["judge_failed"] = failed
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
            tr.setdefault("coherence_raw", {})[name] = [[(x.raw or "") if math.isnan(_nan_if_none(x.score)) else "" for x in r]
                                                        for r in grid(cs)]
            tr.setdefault("coherence_reason", {})[name] = [
                [(x.reason or "") if math.isnan(_nan_if_none(x.score)) else "" for x in r] for r in grid(cs)]
        out["traits"][t.name] = tr
        row += q_n
        flat = hi
    return out, calls


# ----------------------------------------------------------------------------------------------
# Consolidation


def consolidate_run(run: "Run", ehash: str, steps: Sequence[int] | None = None) -> dict[str, Any]:
    """Write the run's scores.h5 from every target's result (fails, touching nothing, if any is missing).

    ``steps``: consolidate only these (the monitor's view while training runs); the file then
    carries ``partial=True`` and the full consolidation replaces it later. With activations
    captured, their files and the persona vectors go in too; a training run stopped by the
    monitor records its intervention (``intervention_step``, ``intervention_action``, ...).
    """
    from emt.provenance import collect
    from emt.store import ConsolidationError, consolidate

    setup_logging()
    root = eval_root(run, ehash)
    partial = steps is not None
    steps = sorted(steps) if steps is not None else targets(run)
    missing = [s for s in steps if not paths.result_file(root, s).is_file()]
    if missing:
        raise ConsolidationError(f"{root}: {len(missing)} checkpoint(s) not scored yet (steps {missing[:10]}"
                                 f"{'...' if len(missing) > 10 else ''}); rerun launch/eval_array.py --run {run.name}")
    results = [paths.result_file(root, s) for s in steps]
    acts: list[Path] | None = None
    personas: dict[str, dict[str, Any]] | None = None
    if run.config.activations.layers:
        acts = [paths.activation_file(root, s) for s in steps]
        lost = [s for s, f in zip(steps, acts) if not f.is_file()]
        if lost:
            raise ConsolidationError(f"{root}: activations.layers is set but steps {lost[:10]} have a result and no "
                                     f"activation file; delete their result files (step-N.json) and rerun "
                                     f"launch/eval_array.py --run {run.name}")
        from emt.persona import load as load_persona

        personas = {}
        for t in load_traits(run.config):
            f = paths.persona_file(root, t.name)
            if f.is_file():
                personas[t.name] = load_persona(f)
    intervention = _intervention_attrs(run)
    if _up_to_date(paths.scores_file(run.path), ehash, steps, results, partial, intervention):
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
             "model": run.config.model.name, "packages": prov["packages"], "partial": partial, **intervention}
    out = consolidate(results, paths.scores_file(run.path), attrs, losses, acts, personas)
    log.info("%s: consolidated %d checkpoints into %s%s", run.name, len(steps), out, " (partial)" if partial else "")
    return {"run": run.name, "scores": str(out), "checkpoints": len(steps), "partial": partial}


def _intervention_attrs(run: "Run") -> dict[str, Any]:
    """scores.h5 attributes of a monitor's intervention on this run ({} when there was none)."""
    f = paths.intervention_file(run.path)
    if not f.is_file():
        return {}
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable, intervention not recorded in scores.h5", f)
        return {}
    out: dict[str, Any] = {"intervention_step": int(rec["stopped_at_step"]),
                           "intervention_action": str(rec.get("action") or "stop")}
    for k in ("trait", "onset_step", "detected_step", "rollback_step"):
        if rec.get(k) is not None:
            out[f"intervention_{k}"] = rec[k]
    return out


def scores_up_to_date(run: "Run", ehash: str) -> bool:
    """True when the run's scores.h5 holds exactly its current results."""
    steps = targets(run)
    results = [paths.result_file(eval_root(run, ehash), s) for s in steps]
    return all(p.is_file() for p in results) and _up_to_date(paths.scores_file(run.path), ehash, steps, results,
                                                             False, _intervention_attrs(run))


def _up_to_date(scores: Path, ehash: str, steps: Sequence[int], results: Sequence[Path], partial: bool = False,
                intervention: dict[str, Any] | None = None) -> bool:
    """True when scores.h5 already holds exactly these results (a rerun rewrites nothing)."""
    if not scores.is_file():
        return False
    import h5py

    try:
        with h5py.File(scores, "r") as h5:
            same = (h5.attrs.get("eval_hash") == ehash and h5["steps"][()].tolist() == list(steps)
                    and bool(h5.attrs.get("partial", False)) == partial
                    and h5.attrs.get("intervention_step", None) == (intervention or {}).get("intervention_step"))
    except (OSError, KeyError):
        return False
    return same and scores.stat().st_mtime >= max(p.stat().st_mtime for p in results)


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
