"""One eval array task: generate every checkpoint of a shard, judge it, write its result.

An eval task receives a shard of a run's checkpoints (:class:`emt.eval.plan.EvalTask`; step 0,
the base model, is always among the run's targets). For each checkpoint it generates answers to
every trait's questions, has every judge score each answer for its trait and for coherence, and
writes one result file atomically (:mod:`emt.store.results`). A checkpoint whose result file
exists is skipped, so a task that runs twice, is requeued, or was killed mid-shard redoes only
what is missing; when nothing is missing it loads no model and calls no judge. Consolidation
(:mod:`emt.eval.consolidate`, one job after the whole array) turns the result files into
``scores.h5``.

Within a task, one generator (one vLLM engine) serves every checkpoint of the shard
(:class:`EvalSession`), and the judges run behind it (:class:`JudgePipeline`): checkpoint i is
scored while checkpoint i+1 generates, with the same results as scoring in line. With a Batch
API judge (``judge.judges[].batch``, :mod:`emt.eval.batch_judge`) the task submits each
checkpoint's batches and moves on (the checkpoint is deferred; its answers and batch ids stay in
``judge-batches/step-N/``); :func:`harvest_run`, in the consolidation job on CPU, waits for them
and writes the results, so no GPU waits on a batch and nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from emt.builtin.common import hf_first_token_logprobs
from emt.core import atomic, paths
from emt.core.config import Config
from emt.core.locks import StepLocks
from emt.core.logs import setup_logging
from emt.core.runtime import limit_torch_threads
from emt.eval.batch_judge import BatchOpenAIJudge, BatchPending, batch_mode, batch_state
from emt.eval.capture import StepCapturer
from emt.eval.generate import Target, adapter_rank, generate_many, make_generator, vllm_engine_args
from emt.eval.judge import JudgeCache, JudgeIncomplete, LocalJudge, OpenAIJudge, request_tags
from emt.eval.persona import ensure_vectors
from emt.eval.plan import EvalTask, eval_root, load_traits, targets
from emt.eval.serve import resolve_server
from emt.store import results
from emt.store.activations import save_step
from emt.sweep.models import resolve_model

if TYPE_CHECKING:
    from emt.builtin.traits import Trait
    from emt.sweep.runs import Run

log = logging.getLogger(__name__)

SERVE_PREFIX = "serve:"  # judge base_url naming a judge.servers entry (launch/judge_serve.py)


# ----------------------------------------------------------------------------------------------
# Judges and the generator, built inside the job


def make_judges(cfg: Config, batch: bool = False) -> list[Any]:
    """The configured judges, sharing the persistent cache under the output root.

    A ``base_url`` of ``serve:<name>`` is resolved here, in the job, from the endpoint file that
    the serve job of ``judge.servers[name]`` writes (waiting up to ``judge.serve_wait_s`` for it).
    ``batch``: judges with ``batch: true`` score through the Batch API
    (:class:`~emt.eval.batch_judge.BatchOpenAIJudge`; the offline eval); otherwise (the monitor)
    every judge asks synchronously.
    """
    cache = JudgeCache(paths.judge_cache_file(cfg.cluster.output_root)) if cfg.judge.cache else None
    judges: list[Any] = []
    for spec in cfg.judge.judges:
        if spec.backend == "openai":
            base_url, token = spec.base_url, None
            if base_url and base_url.startswith(SERVE_PREFIX):
                # The served judge's token comes from its endpoint file and goes to that server only.
                base_url, token = resolve_server(cfg.cluster.output_root, base_url[len(SERVE_PREFIX):],
                                                 wait_s=cfg.judge.serve_wait_s)
            kind: Any = OpenAIJudge
            extra: dict[str, Any] = {}
            if batch and spec.batch:
                kind, extra = BatchOpenAIJudge, {"poll_s": cfg.judge.batch_poll_s}
            judges.append(kind(model=spec.model, base_url=base_url, max_concurrency=cfg.judge.max_concurrency,
                               timeout_s=cfg.judge.timeout_s, max_retries=cfg.judge.max_retries,
                               cache=cache, name=spec.label, api_key_env=spec.api_key_env,
                               api_key=None if spec.api_key_env else token, **extra))
            judges[-1].prices = cfg.judge.prices  # the usage line's cost at the config's prices
        else:
            path = resolve_model(cfg, spec.model)
            if spec.local_backend == "vllm":
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


# ----------------------------------------------------------------------------------------------
# One eval task: generation, with the judge pipelined behind it


@dataclass
class Generated:
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

    ``workers`` > 1 (threaded only): that many checkpoints are judged at once, each in its own
    thread and event loop: a Batch API judge waits minutes to hours per batch, so the batches of
    a shard's checkpoints are submitted and waited for together rather than one after another.
    """

    def __init__(self, handle: Callable[[Generated], None], *, threaded: bool, depth: int = 2,
                 workers: int = 1) -> None:
        self._handle = handle
        self._threaded = threaded
        self._queue: "queue.Queue[Generated | None]" = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self.wait_s = 0.0  # time the caller spent blocked on the judge (queue full, or the final drain)
        if threaded:
            for i in range(max(1, workers)):
                t = threading.Thread(target=self._work, name=f"emt-judge-pipeline-{i}", daemon=True)
                t.start()
                self._threads.append(t)

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

    def submit(self, item: Generated) -> None:
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
        if self._threads:
            t0 = time.perf_counter()
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join()
            self._threads = []
            self.wait_s += time.perf_counter() - t0
        self._raise()


BATCH_WORKERS = 64  # checkpoints whose batches are waited for at once (JudgePipeline workers: threads)


def task_id(task: EvalTask) -> str:
    """A name for this task's timing file: the SLURM array task when there is one."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    if os.environ.get("SLURM_JOB_ID"):
        return os.environ["SLURM_JOB_ID"]
    return f"task{task.task}-{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def score_all(judges: Sequence[Any], prompts: list[str]) -> list[list[Any]]:
    """Every judge's judgements of ``prompts``, the judges running concurrently (an API judge's
    requests overlap a local judge's forward passes); the same judgements as one after another."""
    async def gather() -> list[list[Any]]:
        # Every judge runs to its end before an error surfaces: a Batch API judge's BatchPending
        # (its batches submitted, to be harvested later) must not cut the other judges short.
        out = await asyncio.gather(*(j.ascore(prompts) for j in judges), return_exceptions=True)
        errors = [r for r in out if isinstance(r, BaseException)]
        for e in errors:
            if not isinstance(e, BatchPending):
                raise e
        if errors:
            raise errors[0]
        return list(out)  # type: ignore[arg-type]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    # Inside a running loop (a notebook): run ours in a worker thread, as _JudgeBase.score does.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emt-judges") as ex:
        return ex.submit(lambda: asyncio.run(gather())).result()


def score_checkpoint(step: int, traits: Sequence["Trait"], answers: list[list[str]], judges: Sequence[Any],
                     trait_prompts: list[str], coh_prompts: list[str]) -> tuple[dict[str, Any], int]:
    """One checkpoint's result (:func:`emt.store.results.build`: per trait, answers and each judge's
    scores [question][sample]) and the number of judge calls it cost (cache hits excluded).

    Wherever a score (trait or coherence) is NaN its raw reply and reason are kept. Judgements
    lost in transport after every retry are counted per judge under ``judge_failed`` (count and
    reasons): such a result is incomplete."""
    per_judge = {}
    calls = 0
    for j, js in zip(judges, score_all(judges, trait_prompts + coh_prompts)):
        calls += sum(1 for x in js if not x.cached)
        per_judge[j.name] = (js[: len(trait_prompts)], js[len(trait_prompts):])
    return results.build(step, traits, answers, [j.name for j in judges], per_judge), calls


class EvalSession:
    """What an eval task loads once and uses for every checkpoint of its shard: the traits and
    their conversations, the judges, the generator (one vLLM engine or one transformers model)
    and, with ``activations.layers`` set, the activation capturer.

    :func:`run_eval_task` makes one per task; the monitor (:func:`emt.eval.monitor.follow`) keeps one
    across its rounds, so following a run loads the model once instead of once per round.
    ``max_lora_rank`` must cover every adapter it will serve (a run's adapters share one rank).
    """

    def __init__(self, run: "Run", max_lora_rank: int = 0, batch: bool = False) -> None:
        t0 = time.perf_counter()
        cfg = run.config
        limit_torch_threads(cfg.cluster.eval.cpus)
        self.traits = load_traits(cfg)
        self.convs = conversations(self.traits)
        self.judges = make_judges(cfg, batch=batch)  # batch: the offline eval task only (open_session)
        self.lora = cfg.training.method == "lora"
        self.rank = max_lora_rank
        base = resolve_model(cfg, cfg.model.name)
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


def needed_rank(run: "Run", steps: Sequence[int]) -> int:
    """The largest LoRA rank among the adapters of ``steps`` (0 for full fine-tuning)."""
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
    the persona vectors (:func:`emt.eval.persona.ensure_vectors`). A timing file records what the task
    spent where. ``session``: a loaded :class:`EvalSession` to reuse (the caller closes it);
    without one the task makes its own.
    """
    setup_logging()
    t_start = time.perf_counter()
    run = task.run
    root = eval_root(run, task.eval_hash)
    stats: dict[str, Any] = {"task": task.task, "steps": list(task.steps), "evaluated": [], "generations": 0, "judge_calls": 0}
    # A step is evaluated only under its lock (another launch of this eval, or the monitor, may be
    # at it): steps held elsewhere are waited for and their results used, never generated twice.
    steplocks = StepLocks(lambda s: paths.eval_step_lock(root, s), lambda s: paths.result_file(root, s).is_file())
    todo = [s for s in task.steps if not paths.result_file(root, s).is_file()]
    # Answers already generated and submitted to the Batch API by an earlier try: the harvest
    # (harvest_run, in the consolidation job) scores them; this GPU task does not wait for them.
    waiting = set(paths.judge_batch_steps(root)) & set(todo)
    if waiting:
        stats["batch_pending"] = sorted(waiting)
        log.info("%s task %d: %d checkpoint(s) already submitted to the Batch API, left to the harvest",
                 run.name, task.task, len(waiting))
    todo = steplocks.unless_all_busy([s for s in todo if s not in waiting])
    if not todo:
        log.info("%s task %d: all %d checkpoints already scored or submitted", run.name, task.task, len(task.steps))
        return stats
    available = set(targets(run))
    missing = [s for s in todo if s not in available]
    if missing:
        raise FileNotFoundError(f"{run.path}: no complete checkpoint for steps {missing}")
    own = session is None
    session = open_session(run, todo, session)
    shard_run = ShardRun(task, session, steplocks, stats, wait_batches=False)
    try:
        shard_run.evaluate(todo)
    finally:
        steplocks.release_all()  # steps that failed to generate or judge: free for the next try
        if own:
            session.close()
    shard_run.record_timing(session.startup_s if own else 0.0, time.perf_counter() - t_start)
    shard_run.raise_if_incomplete()
    return stats


class JudgeSession:
    """What :class:`ShardRun` needs of an :class:`EvalSession` to judge stored answers: the
    traits, their conversations and the judges, without a generator (the harvest, on CPU)."""

    def __init__(self, run: "Run") -> None:
        t0 = time.perf_counter()
        cfg = run.config
        self.traits = load_traits(cfg)
        self.convs = conversations(self.traits)
        self.judges = make_judges(cfg, batch=True)
        self.lora = cfg.training.method == "lora"
        self.rank = 0
        self.per_call = 1
        self.gen: Any = None
        self.capturer: Any = None
        self.startup_s = time.perf_counter() - t0

    def close(self) -> None:
        """Nothing to free (no model); for symmetry with :meth:`EvalSession.close`."""


def harvest_run(run: "Run", eval_hash: str) -> dict[str, Any]:
    """Score the checkpoints whose answers wait for Batch API batches: the eval tasks generated
    them and submitted their judgements (``submit`` mode) without waiting, so the GPU is not
    held for the hours a batch may take. Here, on CPU and without a model: each checkpoint's
    batches are waited for (``wait`` mode; ledgers in :func:`emt.core.paths.judge_batch_dir`),
    harvested into the judge cache and its result written; lines that got no reply are
    resubmitted up to ``judge.max_retries`` times. Idempotent (a requeued job resumes the same
    batches); returns at once when nothing waits. Raises JudgeIncomplete naming the checkpoints
    whose judgements were lost after every retry (their answers are kept: rerun the eval)."""
    setup_logging()
    root = eval_root(run, eval_hash)
    steps = []
    for s in paths.judge_batch_steps(root):
        if paths.result_file(root, s).is_file():  # scored meanwhile (e.g. by the monitor): nothing to harvest
            shutil.rmtree(paths.judge_batch_dir(root, s), ignore_errors=True)
        else:
            steps.append(s)
    stats: dict[str, Any] = {"task": "harvest", "steps": steps, "evaluated": [], "generations": 0, "judge_calls": 0}
    if not steps:
        return stats
    session = JudgeSession(run)
    unreadable = [s for s in steps if results.read_answers(paths.judge_batch_answers(root, s), session.traits) is None]
    if unreadable:
        dirs = " ".join(str(paths.judge_batch_dir(root, s)) for s in unreadable)
        raise ValueError(f"{run.name}: the stored answers of step(s) {unreadable} are unreadable or do not match this "
                         f"config's traits: delete {dirs} and rerun the evaluation (it generates them again)")
    log.info("%s: harvesting %d checkpoint(s) from the Batch API (steps %s)", run.name, len(steps),
             ", ".join(map(str, steps[:10])) + (" ..." if len(steps) > 10 else ""))
    steplocks = StepLocks(lambda s: paths.eval_step_lock(root, s), lambda s: paths.result_file(root, s).is_file())
    shard_run = ShardRun(EvalTask(run, tuple(steps), -1, eval_hash), session, steplocks,  # type: ignore[arg-type]
                         stats, wait_batches=True)
    try:
        shard_run.evaluate(steps)
    finally:
        steplocks.release_all()
    for j in session.judges:
        log.info("judge %s", j.format_usage())
    stats["usage"] = {j.name: j.usage() for j in session.judges}
    shard_run.raise_if_incomplete()
    return stats


def progress(done: int, total: int, elapsed_s: float) -> str:
    """"checkpoint k/n, ETA ..." for the log: the time left at the mean time per checkpoint so far
    (generation and judging overlap, so the wall time per checkpoint is the honest rate)."""
    if done >= total or done <= 0:
        return f"checkpoint {done}/{total}"
    return f"checkpoint {done}/{total}, ETA {format_duration(elapsed_s / done * (total - done))}"


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: "40 s", "12 min", "2 h 05 min"."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min"


def open_session(run: "Run", steps: Sequence[int], session: EvalSession | None) -> EvalSession:
    """``session`` when it can serve the adapters of ``steps``, else a new one (ValueError when a
    given session's max_lora_rank is too small)."""
    rank = needed_rank(run, steps)
    if session is None:
        return EvalSession(run, rank, batch=True)  # the offline eval: batch: true judges use the Batch API
    if session.lora and rank > session.rank:
        raise ValueError(f"{run.name}: an adapter of rank {rank} exceeds the session's max_lora_rank {session.rank}")
    return session


class ShardRun:
    """One run of :func:`run_eval_task` over its shard: the state its steps share (what was
    evaluated, the time spent where, the steps whose judgements were lost) and the steps."""

    def __init__(self, task: EvalTask, session: EvalSession, steplocks: StepLocks, stats: dict[str, Any],
                 wait_batches: bool = True) -> None:
        self.task, self.run, self.cfg = task, task.run, task.run.config
        self.root = eval_root(self.run, task.eval_hash)
        self.session, self.steplocks, self.stats = session, steplocks, stats
        self.ckpts = dict(paths.complete_checkpoints(self.run.path))
        self.timing: dict[str, Any] = {"gen_s": 0.0, "judge_s": 0.0, "act_s": 0.0}
        self.lock = threading.Lock()  # the judge worker updates stats and timing too
        self.incomplete: dict[int, dict[str, Any]] = {}  # step -> judge_failed of results set aside
        # Steps whose judge failed last time: their answers are judged again, not regenerated (the
        # same prompts, so the cache answers every judgement that succeeded).
        self.stored: dict[int, list[list[str]]] = {}
        self.wait_s = 0.0
        # Progress for the log ("checkpoint k/n, ETA ..."): steps handed back by the judge (scored
        # or set aside) out of this run's todo, timed from the first generation (start-up excluded).
        self.done, self.total, self.t_eval = 0, 0, time.perf_counter()
        # A Batch API judge: its batch ledgers and the answers they judge are kept per checkpoint
        # (paths.judge_batch_dir), so that a killed or requeued task resumes the same batches with the same answers.
        self.batch = any(isinstance(j, BatchOpenAIJudge) for j in session.judges)
        # False in the GPU eval task: a checkpoint's batches are submitted and left running (the
        # step is "deferred"); the consolidation job's harvest (harvest_run) waits for them.
        self.wait_batches = wait_batches

    def target_for(self, step: int) -> Target:
        """What to generate from for ``step``: the base model, an adapter or a full checkpoint."""
        if step == 0:
            return Target(0)
        ckpt = str(self.ckpts[step])
        return Target(step, adapter=ckpt) if self.session.lora else Target(step, model=ckpt)

    def load_stored(self, steps: Sequence[int]) -> None:
        """Read the answers of the set-aside results of ``steps`` (not read yet)."""
        for s in steps:
            if s not in self.stored:
                a = results.read_answers(paths.judge_failed_file(self.root, s), self.session.traits)
                if a is None and self.batch:  # killed while its batches ran: the answers they judge
                    a = results.read_answers(paths.judge_batch_answers(self.root, s), self.session.traits)
                if a is not None:
                    self.stored[s] = a

    def evaluate(self, todo: Sequence[int]) -> None:
        """Generate and judge every step of ``todo``, round by round of the steps whose lock this task takes."""
        self.load_stored(todo)
        self.done, self.total, self.t_eval = 0, len(todo), time.perf_counter()
        workers = min(BATCH_WORKERS, max(1, len(todo))) if self.batch and self.wait_batches else 1
        pipeline = JudgePipeline(self.judge_and_write, threaded=self.cfg.eval.pipeline_judge or self.batch,
                                 depth=max(self.cfg.eval.judge_queue, workers), workers=workers)
        try:
            pending = list(todo)
            while pending:
                # This round: the steps whose lock this task took. Every one of them is handed to the
                # judge (which releases it) before waiting for the others' holders, so no two tasks
                # ever wait on each other; what a holder leaves unscored (it failed, or was killed) is
                # claimed in the next round.
                mine, pending = self.steplocks.claim(pending)
                self.load_stored(mine)
                self.evaluate_round(mine, pipeline)
                self.steplocks.wait_idle(pending)
        finally:
            # Checkpoints already generated are judged and written even when a later one failed
            # to generate (a rerun then skips them); a judge error surfaces here.
            try:
                pipeline.close()
            finally:
                self.wait_s = pipeline.wait_s

    def evaluate_round(self, mine: Sequence[int], pipeline: JudgePipeline) -> None:
        """Hand this round's steps to the judge: stored answers as they are, the rest generated."""
        capturer = self.session.capturer
        if capturer is not None and self.cfg.activations.persona and 0 in mine:
            # Before step 0's result exists, so that a complete set of results implies the vectors.
            t0 = time.perf_counter()
            # A Batch API judge asks these few prompts synchronously: the vectors are needed now,
            # on the GPU, and a batch may take hours.
            with batch_mode("sync"), request_tags(run=self.run.name, stage="persona"):
                ensure_vectors(self.cfg, self.root, self.session.traits, self.session.gen, self.session.judges[0],
                               capturer)
            self.timing["persona_s"] = time.perf_counter() - t0
        for step, answers in self.stored.items():
            if step in mine and self.has_activations(step):
                pipeline.submit(Generated(step, answers, 0.0))
        regen = [s for s in mine if s not in self.stored or not self.has_activations(s)]
        for i in range(0, len(regen), self.session.per_call):
            self.generate_group(regen[i:i + self.session.per_call], pipeline)

    def has_activations(self, step: int) -> bool:
        """True without capture, or when the step's activation file exists."""
        return self.session.capturer is None or paths.activation_file(self.root, step).is_file()

    def generate_group(self, group: Sequence[int], pipeline: JudgePipeline) -> None:
        """Generate the steps of one generator call, capture their activations, hand them to the judge."""
        cfg, convs, capturer = self.cfg, self.session.convs, self.session.capturer
        n = cfg.eval.samples_per_question
        t0 = time.perf_counter()
        outs = generate_many(self.session.gen, [self.target_for(s) for s in group], [c for _, _, c in convs], n,
                             max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature,
                             seed=cfg.eval.seed)
        gen_s = time.perf_counter() - t0
        self.timing["gen_s"] += gen_s
        self.stats["generations"] += len(group) * len(convs) * n
        for step, answers in zip(group, outs):
            if capturer is not None:
                t1 = time.perf_counter()
                arrays, meta = capturer.capture(self.target_for(step), self.session.traits, convs, answers)
                save_step(paths.activation_file(self.root, step), arrays, dtype=cfg.activations.dtype, meta=meta)
                self.timing["act_s"] += time.perf_counter() - t1
            pipeline.submit(Generated(step, answers, gen_s / len(group)))

    def judge_and_write(self, item: Generated) -> None:
        """Score one generated checkpoint, then write its result file atomically (in the judge
        worker, or inline); a result with lost judgements is set aside instead."""
        run, task = self.run, self.task
        t0 = time.perf_counter()
        convs = self.session.convs
        trait_prompts = [t.judge_prompt_for(q, a) for (t, q, _), ans in zip(convs, item.answers) for a in ans]
        coh_prompts = [t.coherence_prompt_for(q, a) for (t, q, _), ans in zip(convs, item.answers) for a in ans]
        pending = paths.judge_batch_dir(self.root, item.step) if self.batch else None
        if pending is not None and not paths.judge_batch_answers(self.root, item.step).is_file():
            atomic.write_json(paths.judge_batch_answers(self.root, item.step),
                              results.answers_record(self.session.traits, item.answers))
        try:
            with request_tags(run=run.name, step=item.step), batch_state(pending), \
                    batch_mode("wait" if self.wait_batches else "submit"):
                result, calls = score_checkpoint(item.step, self.session.traits, item.answers, self.session.judges,
                                                 trait_prompts, coh_prompts)
        except BatchPending as e:
            self.defer(item.step, e)
            return
        if pending is not None:
            # Every batch is harvested into the judge cache (scored or set aside below): nothing to resume.
            shutil.rmtree(pending, ignore_errors=True)
        judge_s = time.perf_counter() - t0
        if self.batch:  # their cost is the Batch API's (emt.eval.consolidate.judge_costs)
            result["batch_judges"] = [j.name for j in self.session.judges if isinstance(j, BatchOpenAIJudge)]
        result.update(run=run.name, run_hash=run.hash, eval_hash=task.eval_hash,
                      seconds=round(item.gen_seconds + judge_s, 2), gen_seconds=round(item.gen_seconds, 2),
                      judge_seconds=round(judge_s, 2))
        aside = paths.judge_failed_file(self.root, item.step)
        if result.get("judge_failed"):
            self.set_aside(item.step, result, calls, judge_s)
            return
        results.write(paths.result_file(self.root, item.step), result)
        if aside.exists():
            aside.unlink()
        self.steplocks.release(item.step)
        with self.lock:
            self.stats["judge_calls"] += calls
            self.stats["evaluated"].append(item.step)
            self.timing["judge_s"] += judge_s
            where = self.advance()
        log.info("%s task %d: step %d scored, %s (%d answers; generation %.1f s, judges %.1f s)", run.name,
                 task.task, item.step, where, len(trait_prompts), item.gen_seconds, judge_s)

    def set_aside(self, step: int, result: dict[str, Any], calls: int, judge_s: float) -> None:
        """Judgements lost in transport (after every retry): not a result, so the step stays
        pending; the answers are kept so that a rerun asks only the failed prompts again."""
        results.write(paths.judge_failed_file(self.root, step), result)
        self.steplocks.release(step)
        with self.lock:
            self.stats["judge_calls"] += calls
            self.incomplete[step] = result["judge_failed"]
            self.timing["judge_s"] += judge_s
            where = self.advance()
        log.warning("%s task %d: step %d NOT scored, %s: %s", self.run.name, self.task.task, step, where,
                    results.failed_summary(result["judge_failed"]))

    def defer(self, step: int, pending: BatchPending) -> None:
        """A checkpoint whose batches are submitted and still running (``submit`` mode): its
        answers and ledger stay in its batch dir for the harvest; the step stays unscored."""
        self.steplocks.release(step)
        with self.lock:
            self.stats.setdefault("batch_pending", []).append(step)
            where = self.advance()
        log.info("%s task %d: step %d submitted to the Batch API, %s (%s; the consolidation job harvests it)",
                 self.run.name, self.task.task, step, where, pending)

    def advance(self) -> str:
        """Count one more step handed back by the judge (under ``self.lock``); its progress text."""
        self.done += 1
        return progress(self.done, self.total, time.perf_counter() - self.t_eval)

    def record_timing(self, startup_s: float, wall_s: float) -> None:
        """Write the task's timing file (what it spent where; read by ``--tasks auto``) and log it."""
        task, timing, stats = self.task, self.timing, self.stats
        for j in self.session.judges:
            log.info("judge %s", j.format_usage())
        stats["usage"] = {j.name: j.usage() for j in self.session.judges}
        record = {"task": task.task, "steps": list(task.steps), "evaluated": sorted(stats["evaluated"]),
                  "backend": self.cfg.eval.backend, "pipeline_judge": self.cfg.eval.pipeline_judge,
                  "checkpoints_per_call": self.session.per_call,
                  "startup_s": round(startup_s, 3), "wall_s": round(wall_s, 3), "gen_s": round(timing["gen_s"], 3),
                  "judge_s": round(timing["judge_s"], 3), "judge_wait_s": round(self.wait_s, 3),
                  "activations_s": round(timing["act_s"], 3), "persona_s": round(timing.get("persona_s", 0.0), 3),
                  "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic.write_json(paths.eval_timing_file(self.root, task_id(task)), record)
        stats["timing"] = record
        log.info("%s task %d: %d checkpoints in %.1f s (start-up %.1f s, generation %.1f s, judges %.1f s, "
                 "activations %.1f s, waited for judges %.1f s)", self.run.name, task.task, len(stats["evaluated"]),
                 wall_s, startup_s, timing["gen_s"], timing["judge_s"], timing["act_s"], self.wait_s)

    def raise_if_incomplete(self) -> None:
        """JudgeIncomplete naming the steps whose judgements were lost (their answers are kept)."""
        if not self.incomplete:
            return
        merged = results.merge_failures(list(self.incomplete.values()))
        raise JudgeIncomplete(
            f"{self.run.name} task {self.task.task}: judge failed on steps {sorted(self.incomplete)}: "
            f"{results.failed_summary(merged)}; those steps are not scored (their answers are kept): rerun "
            f"launch/eval_array.py --run {self.run.name} once the judge answers, and only the failed prompts are "
            f"asked again")
