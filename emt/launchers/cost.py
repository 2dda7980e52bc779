"""The cost plan printed by every dry run and before every real launch: GPU-hours and judge spend.

What it adds up, for the runs a launcher would train or score:

- Training GPU-hours: the plan's per-run estimate (:mod:`emt.launchers.plan`).
- Evaluation GPU-hours: checkpoints to score (step 0 included) x seconds per checkpoint (a measured
  ``cluster.profile`` or ``eval.checkpoint_cost_s``, :func:`emt.launchers.plan.eval_seconds`), plus
  ``eval.task_startup_s`` per array task, x ``cluster.eval.gpus``.
- Judge calls per judge: every answer (questions x ``eval.samples_per_question``) is judged twice,
  for its trait and for coherence, at every checkpoint; the first judge also confirms the persona
  vectors' (pos, neg) answers once per run at step 0 when ``activations.persona`` is on.
- Input tokens: the judge prompt templates rendered with every question (the prompts the eval task
  sends, with an empty answer), counted at ``CHARS_PER_TOKEN`` characters per token (no tokenizer:
  the judge's, tiktoken's o200k_base, needs a download, and the plan must work offline), plus
  ``CHAT_OVERHEAD_TOKENS`` of chat formatting per request, plus the answer: between none and the
  ``eval.max_new_tokens`` cap, so input tokens and dollars are a range. Output tokens: what the
  judge requests, ``max_tokens=1`` per call (the score is read from that token's top-20 logprobs);
  a local judge generates nothing (one forward pass) and costs no dollars, only the GPU time above.
- Dollars: the tokens at the judge model's price (:func:`emt.eval.judge.price_for`: the built-in
  table of ``PRICES_DATE``, with ``judge.prices`` over it); a ``judge.judges[].batch`` judge at the
  Batch API's price (``BATCH_DISCOUNT``, half) except for monitored runs (scored synchronously),
  its row tagged "(batch)". Not modelled: cache hits (a rerun asks
  only what the judge cache lacks), retries, cached-input discounts.
- With ``--monitor``: a monitor job per submitted run (``cluster.eval`` resources) held from its
  training's start until the run is trained and scored; it scores the checkpoints itself, so its
  GPU-hours replace the evaluation line and the judge calls stay the same.

Every figure is computed once, into a :class:`CostPlan` (:func:`cost_plan`); the human table
(:func:`render_costs`) and ``--dry-run --json`` (:func:`cost_json`) both print from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

from emt.core.config import Config
from emt.core.profiles import load_profile
from emt.eval.judge import BATCH_DISCOUNT, PRICES_DATE, price_for
from emt.eval.plan import eval_hash, eval_root, load_traits
from emt.launchers.plan import CHARS_PER_TOKEN, RunPlan, eval_seconds
from emt.sweep.runs import Run, train_world_size

CHAT_OVERHEAD_TOKENS = 7  # one user message in OpenAI's chat format: role and separators, reply priming


@dataclass(frozen=True)
class RunWork:
    """What one run costs from here: training (None when not trained by this launch) and the
    checkpoints its evaluation scores, in how many array tasks, with or without persona vectors."""

    name: str
    checkpoints: int
    tasks: int
    persona: bool
    train_gpu_hours: float | None = None
    train_wall_hours: float | None = None  # for the monitor: how long its job is held at least


@dataclass(frozen=True)
class JudgeLoad:
    """Per judge: calls and input tokens of one checkpoint and of one run's persona vectors.
    Input tokens are the fixed part (templates, questions, chat formatting) and the answers'
    upper bound (every answer at its max_new_tokens cap)."""

    calls: int
    fixed_tokens: float
    answer_cap_tokens: float
    persona_calls: int
    persona_fixed_tokens: float
    persona_answer_cap_tokens: float
    n_questions: int
    samples: int


def judge_load(cfg: Config) -> JudgeLoad:
    """The judge's work per checkpoint and per run's persona vectors, from the rendered prompts.

    Raises what the trait loader raises (the eval preflight reports it with the fix)."""
    traits = load_traits(cfg)
    e, a = cfg.eval, cfg.activations
    n = e.samples_per_question
    chars = 0
    n_q = 0
    for t in traits:
        for q in t.questions:
            chars += len(t.judge_prompt_for(q, "")) + len(t.coherence_prompt_for(q, ""))
            n_q += 1
    calls = 2 * n * n_q  # every answer: its trait, then coherence
    p_calls, p_chars = 0, 0
    if a.layers and a.persona:  # emt.eval.persona: instruction pairs x questions x (pos, neg) x samples
        for t in traits:
            qs = list(t.questions)[: a.persona_questions or None]
            per_side = len(t.instructions) * 2 * a.persona_samples
            p_calls += 2 * per_side * len(qs)
            p_chars += per_side * sum(len(t.judge_prompt_for(q, "")) + len(t.coherence_prompt_for(q, "")) for q in qs)
    return JudgeLoad(calls, chars * n / CHARS_PER_TOKEN + calls * CHAT_OVERHEAD_TOKENS, calls * float(e.max_new_tokens),
                     p_calls, p_chars / CHARS_PER_TOKEN + p_calls * CHAT_OVERHEAD_TOKENS,
                     p_calls * float(a.persona_max_new_tokens), n_q, n)


@dataclass(frozen=True)
class JudgeCost:
    """One judge's share of the plan."""

    label: str
    model: str
    where: str  # "api.openai.com", a URL, serve:<name>, or "local"
    calls: int
    input_min: float  # tokens, answers empty
    input_max: float  # tokens, answers at their cap
    output: float
    price: tuple[str, float, float] | None  # (prefix, USD in, USD out per 1M); None: unknown
    usd_min: float | None
    usd_max: float | None
    batch: bool = False  # priced (at least in part) at the Batch API's price (judge.judges[].batch)


def judge_costs(cfg: Config, work: Sequence[RunWork], load: JudgeLoad,
                monitored: Collection[str] = ()) -> list[JudgeCost]:
    """Calls, tokens and dollars of each configured judge for ``work``.

    A ``batch: true`` judge is priced at the Batch API's price (half) for the offline eval's
    checkpoints, and at the standard price for the persona vectors (asked synchronously: the GPU
    task needs them at once) and for the runs in ``monitored`` (the monitor asks synchronously);
    ``price`` is then the Batch price."""

    def load_of(i: int, runs: Sequence[RunWork], ckpt: bool = True, persona: bool = True) -> tuple[int, float, float]:
        ckpts = sum(w.checkpoints for w in runs) if ckpt else 0
        # persona vectors: the first judge only
        p = sum(1 for w in runs if w.persona) if i == 0 and persona else 0
        lo = ckpts * load.fixed_tokens + p * load.persona_fixed_tokens
        hi = lo + ckpts * load.answer_cap_tokens + p * load.persona_answer_cap_tokens
        return ckpts * load.calls + p * load.persona_calls, lo, hi

    out: list[JudgeCost] = []
    for i, spec in enumerate(cfg.judge.judges):
        calls, lo, hi = load_of(i, work)
        if spec.backend == "local":
            out.append(JudgeCost(spec.label, spec.model, "local", calls, lo, hi, 0.0, None, 0.0, 0.0))
            continue
        batch = spec.batch and any(w.name not in monitored for w in work)
        price = price_for(spec.model, cfg.judge.prices, batch=batch)
        output = float(calls)  # max_tokens=1
        usd: tuple[float | None, float | None] = (None, None)
        if price is not None:
            parts = [(load_of(i, work), price)]
            if spec.batch:  # the persona vectors and the monitored runs' share at the standard price
                full = price_for(spec.model, cfg.judge.prices)
                assert full is not None
                offline = [w for w in work if w.name not in monitored]
                parts = [(load_of(i, offline, persona=False), price), (load_of(i, offline, ckpt=False), full),
                         (load_of(i, [w for w in work if w.name in monitored]), full)]
            usd_lo = usd_hi = 0.0
            for (c, a, b), (_, p_in, p_out) in parts:
                usd_lo += (a * p_in + c * p_out) / 1e6
                usd_hi += (b * p_in + c * p_out) / 1e6
            usd = (usd_lo, usd_hi)
        out.append(JudgeCost(spec.label, spec.model, spec.base_url or "api.openai.com", calls, lo, hi, output,
                             price, usd[0], usd[1], batch))
    return out


def eval_hours(cfg: Config, w: RunWork, eval_s: float) -> float:
    """GPU-hours of scoring ``w``'s checkpoints in its array tasks (start-up included)."""
    gpus = max(1, cfg.cluster.eval.gpus)
    return (w.checkpoints * eval_s + w.tasks * cfg.eval.task_startup_s) * gpus / 3600


def tokens(v: float) -> str:
    """A token count for the table: 1.52G, 333.1M, 12.3k."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            x = v / div
            return f"{x:.2f}{unit}" if x < 10 else f"{x:.1f}{unit}" if x < 100 else f"{x:,.0f}{unit}"
    return f"{v:.0f}"


def token_range(lo: float, hi: float) -> str:
    """``lo-hi`` tokens, or one figure when they print the same."""
    return tokens(lo) if tokens(lo) == tokens(hi) else f"{tokens(lo)}-{tokens(hi)}"


def usd(lo: float | None, hi: float | None, one: bool = False) -> str:
    """A dollar range (one figure when there is no range, or with ``one``); '?' when unknown."""
    if one and lo is not None:
        hi = lo
    if lo is None or hi is None:
        return "?"
    f = (lambda v: f"${v:,.2f}") if hi < 100 else (lambda v: f"${v:,.0f}")
    return f(lo) if f(lo) == f(hi) else f"{f(lo)}-{f(hi)}"


def dollar(v: float) -> str:
    """A price: $0.40, $0.075."""
    return f"${v:.2f}" if round(v, 2) == v else f"${v:g}"


def measured_answer_tokens(roots: Sequence[Path], limit: int = 20) -> tuple[float, int] | None:
    """(mean answer length in tokens, checkpoints it comes from): the answers of the newest
    ``limit`` result files under ``roots`` (earlier checkpoints of the same evaluation), at
    ``CHARS_PER_TOKEN``; None when there are none. A narrower range than "none to the cap"."""
    files = sorted((f for r in roots if r.is_dir() for f in r.glob("step-*.json")),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    chars = answers = used = 0
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            rows = [a for tr in data["traits"].values() for row in tr["responses"] for a in row]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged file is the consolidation's to report; the plan just skips it
        chars += sum(len(str(a)) for a in rows)
        answers += len(rows)
        used += 1
        if used >= limit:
            break
    return (chars / answers / CHARS_PER_TOKEN, used) if answers else None


def measured_for_runs(cfg: Config, runs: Sequence[Run]) -> tuple[float, int] | None:
    """:func:`measured_answer_tokens` over the runs' results of the configured evaluation (None
    when there are none, or when the traits cannot be read: the preflight reports that)."""
    try:
        ehash = eval_hash(cfg)
    except Exception:  # noqa: BLE001 - bad traits are the eval preflight's to report
        return None
    return measured_answer_tokens([eval_root(r, ehash) for r in runs])


@dataclass(frozen=True)
class MonitorJob:
    """A ``--monitor`` job: the run it follows and how long it is held (the longer of the run's
    training wall time and scoring its checkpoints with one start-up)."""

    run: str
    held_hours: float


@dataclass(frozen=True)
class JudgeBasis:
    """The basis lines of a priced judge: where its price comes from, what each 100 tokens of
    mean answer length add, and (with answers already scored) the point estimate at their mean."""

    price_source: str  # "judge.prices" or "built-in table of <PRICES_DATE>"
    usd_per_100_answer_tokens: float
    measured_mean_tokens: float | None = None
    measured_input_tokens: float | None = None
    measured_usd: float | None = None


@dataclass(frozen=True)
class CostPlan:
    """Every figure of the cost table, computed once: the human table (:func:`render_costs`) and
    the ``--json`` document (:func:`cost_json`) both print from it."""

    work: tuple[RunWork, ...]
    eval_s: float  # GPU seconds per scored checkpoint
    eval_src: str  # where eval_s comes from
    checkpoints: int  # scored in all (step 0 counts as one): what the judges are called for
    tasks: int  # array tasks if every run were scored by an array
    trained: int  # runs trained by this launch
    train_gpu_hours: float
    arrayed: tuple[RunWork, ...]  # the runs an evaluation array scores (all, or the unmonitored)
    eval_gpu_hours: float  # the arrays' GPU-hours, task start-up included
    monitor: tuple[MonitorJob, ...] | None  # None: monitoring off
    monitor_gpu_hours: float
    monitor_limit_min: int  # a monitor job's time limit (the longer of cluster.eval and cluster.train)
    judges: tuple[JudgeCost, ...]
    bases: tuple[JudgeBasis | None, ...]  # one per judge; None for a local or unpriced one
    load: JudgeLoad | None  # None: the traits could not be read (load_error says why)
    load_error: str
    measured: tuple[float, int] | None  # (mean answer tokens, checkpoints it comes from)

    @property
    def total_gpu_hours(self) -> float:
        return self.train_gpu_hours + self.eval_gpu_hours + self.monitor_gpu_hours

    @property
    def judge_calls(self) -> int | None:
        """Calls over every judge; None when the judges' load is unknown."""
        return sum(jc.calls for jc in self.judges) if self.judges else None

    @property
    def usd_range(self) -> tuple[float, float] | None:
        """(low, high) dollars over the judges with a price; None when there are no judges."""
        if not self.judges:
            return None
        known = [jc for jc in self.judges if jc.usd_min is not None]
        return sum(jc.usd_min or 0.0 for jc in known), sum(jc.usd_max or 0.0 for jc in known)

    @property
    def usd_complete(self) -> bool:
        """False when a judge has no price (its dollars are not in the total)."""
        return bool(self.judges) and all(jc.usd_min is not None for jc in self.judges)

    @property
    def persona_runs(self) -> int:
        return sum(1 for w in self.work if w.persona)

    @property
    def over_limit(self) -> list[MonitorJob]:
        """Monitor jobs that would be held longer than their time limit."""
        return [m for m in self.monitor or () if m.held_hours * 60 > self.monitor_limit_min]


def cost_plan(cfg: Config, work: Sequence[RunWork], *, monitor: Sequence[str] | None = None,
              measured: tuple[float, int] | None = None) -> CostPlan:
    """The figures of the cost table for ``work`` (see :func:`format_costs` for the arguments)."""
    prof = load_profile(cfg.cluster.profile) if cfg.cluster.profile else None
    eval_s, eval_src = eval_seconds(cfg, prof)
    trained = [w for w in work if w.train_gpu_hours is not None]
    gpus = max(1, cfg.cluster.eval.gpus)
    mon: tuple[MonitorJob, ...] | None = None
    if monitor is not None:
        # Held from training's start; done when training has ended and its checkpoints are
        # scored, whichever takes longer (one start-up: the session stays loaded).
        mon = tuple(MonitorJob(w.name, max(w.train_wall_hours or 0.0,
                                           (w.checkpoints * eval_s + cfg.eval.task_startup_s) / 3600))
                    for w in work if w.name in monitor)
    monitored = {m.run for m in mon or ()}
    arrayed = tuple(w for w in work if w.name not in monitored)
    why = ""
    try:
        load: JudgeLoad | None = judge_load(cfg)
    except Exception as exc:  # noqa: BLE001 - the eval preflight reports bad traits with the fix
        load, why = None, str(exc)
    costs = judge_costs(cfg, work, load, monitored=set(monitor or ())) if load is not None else []
    bases: list[JudgeBasis | None] = []
    for jc in costs:
        if jc.where == "local" or jc.price is None:
            bases.append(None)
            continue
        prefix, p_in, p_out = jc.price
        basis = JudgeBasis("judge.prices" if prefix in cfg.judge.prices else f"built-in table of {PRICES_DATE}",
                           jc.calls * 100 * p_in / 1e6)
        if measured is not None:
            mean = min(measured[0], float(cfg.eval.max_new_tokens))
            t_in = jc.input_min + jc.calls * mean
            basis = dataclasses.replace(basis, measured_mean_tokens=mean, measured_input_tokens=t_in,
                                        measured_usd=(t_in * p_in + jc.output * p_out) / 1e6)
        bases.append(basis)
    return CostPlan(
        work=tuple(work), eval_s=eval_s, eval_src=eval_src,
        checkpoints=sum(w.checkpoints for w in work), tasks=sum(w.tasks for w in work),
        trained=len(trained), train_gpu_hours=sum(w.train_gpu_hours or 0.0 for w in trained),
        arrayed=arrayed, eval_gpu_hours=sum(eval_hours(cfg, w, eval_s) for w in arrayed),
        monitor=mon, monitor_gpu_hours=sum(m.held_hours for m in mon or ()) * gpus,
        monitor_limit_min=max(cfg.cluster.eval.time_min, cfg.cluster.train.time_min),
        judges=tuple(costs), bases=tuple(bases), load=load, load_error=why, measured=measured)


def format_costs(cfg: Config, work: Sequence[RunWork], *, monitor: Sequence[str] | None = None,
                 what: str = "this launch", measured: tuple[float, int] | None = None) -> str:
    """The cost table and the arithmetic behind each figure.

    ``work``: the runs and what they cost from here. ``monitor``: names of the runs that get a
    monitor job (``--monitor``); None when monitoring is off. ``measured``: the mean answer length
    of checkpoints already scored (:func:`measured_answer_tokens`), for a point estimate."""
    return render_costs(cfg, cost_plan(cfg, work, monitor=monitor, measured=measured), what)


def render_costs(cfg: Config, plan: CostPlan, what: str = "this launch") -> str:
    """The human cost table of ``plan`` (its numbers, formatted) and the basis of each figure."""
    e = cfg.eval
    cols = f"  {'':<44}{'GPU-h':>8}{'judge calls':>14}{'input tokens':>16}{'output tokens':>15}{'USD':>16}"
    lines = [f"Cost of {what} (estimates; the basis of each figure below):", cols, "  " + "-" * (len(cols) - 2)]

    def row(label: str, gpu_h: float | None = None, calls: int | None = None, tin: str = "", tout: str = "",
            dollars: str = "") -> str:
        h = "" if gpu_h is None else ("<0.01" if 0 < gpu_h < 0.01 else f"{gpu_h:,.2f}")
        c = "" if calls is None else f"{calls:,}"
        return f"  {label[:44]:<44}{h:>8}{c:>14}{tin:>16}{tout:>15}{dollars:>16}".rstrip()

    if plan.trained:
        lines.append(row(f"training: {plan.trained} run(s)", plan.train_gpu_hours))
    if plan.monitor is not None:
        lines.append(row(f"monitor: {len(plan.monitor)} job(s), scoring as they train", plan.monitor_gpu_hours))
        if plan.arrayed:
            lines.append(row(f"evaluation of {len(plan.arrayed)} unmonitored run(s)", plan.eval_gpu_hours))
    else:
        lines.append(row(f"evaluation: {plan.checkpoints:,} checkpoints, {plan.tasks} task(s)", plan.eval_gpu_hours))
    for jc in plan.judges:
        tag = " (local)" if jc.where == "local" else " (batch)" if jc.batch else ""
        lines.append(row(f"judge {jc.label[:44 - len(tag) - 6]}{tag}", None, jc.calls,
                         token_range(jc.input_min, jc.input_max), tokens(jc.output),
                         usd(jc.usd_min, jc.usd_max)))
    total = plan.usd_range
    total_usd = "?" if total is None else usd(*total) + ("" if plan.usd_complete else "+?")
    lines += ["  " + "-" * (len(cols) - 2), row("total", plan.total_gpu_hours, plan.judge_calls, "", "", total_usd)]

    # The basis of each figure.
    if plan.trained:
        lines.append("Training: the run table's GPU-h column above (its rate and assumptions are stated there)")
    gpus = max(1, cfg.cluster.eval.gpus)
    if plan.arrayed:
        lines.append(f"Evaluation: {sum(w.checkpoints for w in plan.arrayed):,} checkpoints (step 0 counts as one) x "
                     f"{plan.eval_s:.3g} s + {sum(w.tasks for w in plan.arrayed)} array task(s) "
                     f"(eval.checkpoints_per_task={e.checkpoints_per_task}) x eval.task_startup_s={e.task_startup_s:g} s "
                     f"start-up" + (f", x cluster.eval.gpus={gpus}" if gpus > 1 else ""))
    lines.append(f"Scoring one checkpoint: {plan.eval_src}")
    if plan.monitor is not None:
        if plan.monitor:
            res = cfg.cluster.eval
            limit = plan.monitor_limit_min
            lines.append(f"Monitor (--monitor): a job per submitted run ({len(plan.monitor)}; cluster.eval resources, "
                         f"{res.gpus} GPU(s), time limit {limit} min) held from its start (earlier than its training's "
                         f"if SLURM starts it first) until the run is trained and every checkpoint scored: per run the "
                         f"longer of training's wall time and scoring (checkpoints x {plan.eval_s:.3g} s + one start-up). "
                         f"It scores the checkpoints itself: this replaces the evaluation array's GPU-hours for those "
                         f"runs; judge calls are the same")
            over = [f"{m.run} (~{m.held_hours:.1f} h)" for m in plan.over_limit]
            if over:
                lines.append(f"WARNING: monitor jobs would outlast their {limit}-min limit: {', '.join(over)}; "
                             f"raise cluster.eval.time_min or cluster.train.time_min, or score the rest with "
                             f"launch/eval_array.py afterwards")
        else:
            lines.append("Monitor (--monitor): no job (no run to submit)")
    load = plan.load
    if load is None:
        lines.append(f"Judges: calls and tokens unknown (traits unreadable: {plan.load_error})")
        return "\n".join(lines)
    persona = plan.persona_runs
    lines.append(f"Judge calls per judge: {load.n_questions} questions x {load.samples} samples (eval.samples_per_question) "
                 f"x 2 (trait + coherence) = {load.calls:,} per checkpoint, x {plan.checkpoints:,} checkpoints"
                 + (f"; + {load.persona_calls:,} per run for the persona vectors (first judge, at step 0; "
                    f"{persona} run(s))" if persona and load.persona_calls else ""))
    lines.append(f"Input tokens: the judge and coherence templates rendered with each question "
                 f"({load.fixed_tokens / max(load.calls, 1):,.0f} tokens per call on average at {CHARS_PER_TOKEN:g} "
                 f"characters per token, {CHAT_OVERHEAD_TOKENS} of chat formatting included) plus the answer, from "
                 f"none to eval.max_new_tokens={e.max_new_tokens}"
                 + (f" (persona-vector answers: activations.persona_max_new_tokens={cfg.activations.persona_max_new_tokens})"
                    if persona and load.persona_calls else "")
                 + "; output: max_tokens=1 per call (the score is read from that token's top-20 logprobs)")
    for jc, basis in zip(plan.judges, plan.bases):
        if jc.where == "local":
            lines.append(f"  {jc.label}: a local judge (forward passes inside the eval job): no dollars, its time is "
                         f"in the evaluation GPU-hours")
        elif jc.price is None or basis is None:
            fix = ("served on the cluster by launch/judge_serve.py, whose GPU job is not in this plan; "
                   if jc.where.startswith("serve:") else "")
            lines.append(f"  {jc.label}: no price for {jc.model!r} ({fix}judge.prices={{{jc.model}: [usd_in, usd_out]}} "
                         f"prices it, per 1M tokens)")
        else:
            prefix, p_in, p_out = jc.price
            name = jc.label if jc.label == jc.model else f"{jc.label} ({jc.model})"
            lines.append(f"  {name}: {dollar(p_in)} in / {dollar(p_out)} out per 1M tokens ({prefix!r}, "
                         f"{basis.price_source}; judge.prices overrides); each 100 tokens of mean answer length add "
                         f"${basis.usd_per_100_answer_tokens:,.2f}")
            if jc.batch:
                lines.append(f"    Batch API price (judge.judges[].batch: {BATCH_DISCOUNT:g} x the standard price; "
                             f"results within 24 h, waited for by each run's consolidation job on CPU, "
                             f"judge.batch_harvest_min={cfg.judge.batch_harvest_min}); the persona vectors' calls "
                             f"are synchronous, at the standard price"
                             + ("; monitored runs are scored synchronously, at the standard price"
                                if plan.monitor else ""))
            if plan.measured is not None and basis.measured_input_tokens is not None:
                lines.append(f"    at the mean answer length of the {plan.measured[1]} checkpoint(s) already scored here "
                             f"(~{basis.measured_mean_tokens:,.0f} tokens): ~{tokens(basis.measured_input_tokens)} input "
                             f"tokens, ~{usd(basis.measured_usd, None, one=True)}")
    lines.append("  Not counted: judge cache hits (a rerun asks only prompts it has not asked), retries, "
                 "cached-input discounts")
    return "\n".join(lines)


def cost_json(plan: CostPlan) -> dict[str, Any]:
    """``--dry-run --json``'s cost plan: the numbers of the human cost table, unrounded
    (GPU-hours, calls, tokens, dollars; null where the table says '?')."""
    usd_total = plan.usd_range
    judges = []
    for jc, basis in zip(plan.judges, plan.bases):
        judges.append({
            "label": jc.label, "model": jc.model, "where": jc.where, "local": jc.where == "local", "batch": jc.batch,
            "calls": jc.calls, "input_tokens_min": jc.input_min, "input_tokens_max": jc.input_max,
            "output_tokens": jc.output,
            "price": None if jc.price is None else {
                "match": jc.price[0], "usd_in_per_1m": jc.price[1], "usd_out_per_1m": jc.price[2],
                "source": basis.price_source if basis is not None else None},
            "usd_min": jc.usd_min, "usd_max": jc.usd_max,
            "usd_per_100_answer_tokens": basis.usd_per_100_answer_tokens if basis is not None else None,
            "at_measured_answer_length": None if basis is None or basis.measured_input_tokens is None else {
                "mean_answer_tokens": basis.measured_mean_tokens, "input_tokens": basis.measured_input_tokens,
                "usd": basis.measured_usd},
        })
    return {
        "prices_date": PRICES_DATE,
        "eval_seconds_per_checkpoint": plan.eval_s, "eval_seconds_source": plan.eval_src,
        "checkpoints": plan.checkpoints,
        "training": {"runs": plan.trained, "gpu_hours": plan.train_gpu_hours} if plan.trained else None,
        "evaluation": {"runs": len(plan.arrayed), "checkpoints": sum(w.checkpoints for w in plan.arrayed),
                       "tasks": sum(w.tasks for w in plan.arrayed), "gpu_hours": plan.eval_gpu_hours},
        "monitor": None if plan.monitor is None else {
            "jobs": [{"run": m.run, "held_hours": m.held_hours} for m in plan.monitor],
            "gpu_hours": plan.monitor_gpu_hours, "time_limit_min": plan.monitor_limit_min,
            "over_limit": [m.run for m in plan.over_limit]},
        "judges": judges,
        "judges_unknown": plan.load_error or None,
        "measured_answer_tokens": None if plan.measured is None else
        {"mean": plan.measured[0], "checkpoints": plan.measured[1]},
        "total": {"gpu_hours": plan.total_gpu_hours, "judge_calls": plan.judge_calls,
                  "usd_min": None if usd_total is None else usd_total[0],
                  "usd_max": None if usd_total is None else usd_total[1],
                  "usd_complete": plan.usd_complete},
    }


def train_work(cfg: Config, rows: Sequence[RunPlan]) -> list[RunWork]:
    """What each planned training run costs: its training, then scoring every checkpoint and step 0
    in tasks of ``eval.checkpoints_per_task``."""
    out: list[RunWork] = []
    world = train_world_size(cfg)
    persona = bool(cfg.activations.layers and cfg.activations.persona)
    for r in rows:
        if r.checkpoints is None:
            continue
        n = r.checkpoints + 1
        out.append(RunWork(r.run.name, n, math.ceil(n / max(1, cfg.eval.checkpoints_per_task)), persona,
                           r.gpu_hours, None if r.gpu_hours is None else r.gpu_hours / world))
    return out
