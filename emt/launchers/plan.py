"""The dry-run plan: per run, steps, checkpoints, disk and GPU-hours, before anything runs.

Steps follow the Trainer's own arithmetic (``ceil(ceil(n_train / batch) / grad_accum)`` per
epoch), so the plan's checkpoint count is the one training produces. Disk and GPU-hours are
estimates with stated assumptions: model shapes come from the model's config.json when it is on
this machine, else from a table of known architectures; tokens per example are estimated as
characters / 4; compute is ~4 x params x tokens for LoRA (no weight gradients of the frozen base)
and ~6 x for full fine-tuning, plus checkpoint writes at ``WRITE_GBPS``. With ``cluster.train.gpus``
= N a run trains on N processes, so one step consumes N x batch x grad_accum examples.

The rate comes from a measured profile when ``cluster.profile`` names one (the JSON that
``bench/gpu_check.py`` writes on the GPU: achieved TFLOP/s of LoRA and of DeepSpeed full
fine-tuning, seconds per evaluated checkpoint); otherwise from the assumed ``cluster.gpu_tflops``
(and ``eval.checkpoint_cost_s`` for evaluation), and the plan says which it used. Evaluation
GPU-hours are (checkpoints + 1) x seconds per checkpoint: the profile's transformers-backend
figure is scaled to the configured questions x samples (in batches of its batch size) and answer
length, plus activation capture when ``activations.layers`` is set.

Disk: a LoRA checkpoint is its fp32 adapter (4 B per adapter parameter); a full checkpoint is the
whole model in the training dtype (2 B per parameter in bf16; ``save_only_model``-style, without
optimizer state). Resume state (Adam moments, and fp32 master weights for full fine-tuning) is
kept on the newest ``keep_resume_state`` checkpoints only. When the estimate exceeds
``cluster.disk_budget_gb`` the plan says by how much and what fits (``checkpointing.keep_every``,
or evaluating checkpoints while training runs).

The cost table printed after this plan (evaluation GPU-hours with task start-up, judge calls,
tokens and dollars per judge, monitor jobs) is :mod:`emt.launchers.cost`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from emt.core import paths
from emt.core.config import BUILTIN_ORGANISM, BUILTIN_TINY_MODEL, Config
from emt.core.profiles import Profile, load_profile
from emt.sweep.data import count_lines, split_sizes
from emt.eval.plan import eval_root, load_traits
from emt.store.activations import bytes_per_checkpoint
from emt.sweep.runs import Run, run_state, train_world_size
from emt.sweep.models import model_path

# --json is a dry run's output: a real launch's jobs and their state are `emt status --json`'s.
JSON_NEEDS_DRY_RUN = ("--json needs --dry-run: it prints the plan as one JSON document and submits nothing; "
                      "after a launch, `emt status --json` (launch/status.py --json) gives the jobs and their state")

CHARS_PER_TOKEN = 4.0
DEFAULT_TOKENS_PER_EXAMPLE = 400
WRITE_GBPS = 1.0  # checkpoint write bandwidth assumed by the estimates

# (hidden, intermediate, layers, heads, kv_heads, vocab, tied): public Qwen2.5 configs, used only
# when a model's config.json is not on this machine (the launcher never downloads).
KNOWN_ARCHS: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "qwen/qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen/qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen/qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen/qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
    "qwen/qwen2.5-14b": (5120, 13824, 48, 40, 8, 152064, False),
    "qwen/qwen2.5-32b": (5120, 27648, 64, 40, 8, 152064, False),
    BUILTIN_TINY_MODEL: (256, 512, 2, 4, 2, 3000, True),
    BUILTIN_ORGANISM: (128, 512, 4, 2, 2, 1541, True),  # emt.builtin.organism (vocabulary as built, recipe 1)
}


@dataclass(frozen=True)
class Arch:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a Qwen2 decoder block."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def params(self) -> int:
        block = sum(a * b for a, b in self.module_shapes().values()) + 2 * self.hidden
        emb = self.vocab * self.hidden
        return self.layers * block + emb * (1 if self.tied else 2)

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        shapes = self.module_shapes()
        per_layer = sum(r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)
        return self.layers * per_layer


def model_arch(cfg: Config) -> tuple[Arch | None, str]:
    """The model's shapes and where they came from ("config.json", "table", or why unknown)."""
    mpath = Path(model_path(cfg))
    candidates = [mpath / "config.json"]
    if not mpath.exists() and "/" in cfg.model.name:
        hub = Path.home() / ".cache" / "huggingface" / "hub" / f"models--{cfg.model.name.replace('/', '--')}"
        candidates += sorted(hub.glob("snapshots/*/config.json"))
    for c in candidates:
        if c.is_file():
            j = json.loads(c.read_text())
            heads = j["num_attention_heads"]
            return Arch(j["hidden_size"], j["intermediate_size"], j["num_hidden_layers"], heads,
                        j.get("num_key_value_heads", heads), j["vocab_size"],
                        bool(j.get("tie_word_embeddings", False))), "config.json"
    key = cfg.model.name.lower().removesuffix("-instruct")
    if key in KNOWN_ARCHS:
        return Arch(*KNOWN_ARCHS[key]), "table"
    return None, "unknown architecture (no config.json on this machine)"


def train_rate(cfg: Config, prof: Profile | None) -> tuple[float, str]:
    """Effective TFLOP/s per GPU for the config's training method, and where it came from."""
    t = cfg.training
    if prof is not None:
        if t.method == "lora":
            keys = ["lora"]
        else:
            keys = [f"full:{t.deepspeed}"] + sorted(k for k in prof.train_tflops if k.startswith("full:"))
        for k in keys:
            if k in prof.train_tflops:
                return prof.train_tflops[k], f"measured {prof.train_tflops[k]:.4g} TFLOP/s ({k}) from {prof.label()}"
        return cfg.cluster.gpu_tflops, (f"assumed cluster.gpu_tflops={cfg.cluster.gpu_tflops:g} TFLOP/s (the profile "
                                        f"{prof.path} has no figure for {keys[0]})")
    return cfg.cluster.gpu_tflops, (f"assumed cluster.gpu_tflops={cfg.cluster.gpu_tflops:g} TFLOP/s (no cluster.profile: "
                                    f"bench/gpu_check.py measures one)")


def eval_seconds(cfg: Config, prof: Profile | None) -> tuple[float, str]:
    """GPU seconds to evaluate one checkpoint (generation, plus activation capture when
    ``activations.layers`` is set), and where the figure came from."""
    e = cfg.eval
    if prof is None or (prof.eval_s_per_checkpoint is None and prof.vllm_s_per_checkpoint is None):
        why = "no cluster.profile" if prof is None else f"the profile {prof.path} has no evaluation figures"
        return e.checkpoint_cost_s, f"assumed eval.checkpoint_cost_s={e.checkpoint_cost_s:g} s per checkpoint ({why})"
    try:
        n_q = sum(len(t.questions) for t in load_traits(cfg))
    except Exception as exc:  # noqa: BLE001 - the eval preflight reports bad traits; the plan falls back
        return e.checkpoint_cost_s, f"assumed eval.checkpoint_cost_s={e.checkpoint_cost_s:g} s (traits unreadable: {exc})"
    seqs = n_q * e.samples_per_question
    if e.backend == "vllm" and prof.vllm_s_per_checkpoint is not None:
        # vLLM batches all of a checkpoint's sequences at once: scale by tokens to generate.
        s = prof.vllm_s_per_checkpoint * seqs / prof.vllm_sequences * e.max_new_tokens / prof.vllm_max_new_tokens
        how = f"vLLM measured {prof.vllm_s_per_checkpoint:.3g} s for {prof.vllm_sequences} answers"
    else:
        assert prof.eval_s_per_checkpoint is not None and prof.eval_sequences and prof.eval_batch_size
        # transformers generates batch after batch, each as long as its longest answer.
        batches = math.ceil(seqs / prof.eval_batch_size) / math.ceil(prof.eval_sequences / prof.eval_batch_size)
        s = prof.eval_s_per_checkpoint * batches * e.max_new_tokens / prof.eval_max_new_tokens
        how = (f"transformers backend measured {prof.eval_s_per_checkpoint:.3g} s for {prof.eval_sequences} answers x "
               f"{prof.eval_max_new_tokens} tokens" + (" (vLLM not measured: an upper bound for it)" if e.backend == "vllm" else ""))
    if cfg.activations.layers and prof.eval_capture_s is not None and prof.eval_sequences:
        s += prof.eval_capture_s * seqs / prof.eval_sequences
        how += ", activation capture included"
    return s, f"{s:.3g} s per checkpoint for {seqs} answers x {e.max_new_tokens} tokens ({how}; {prof.label()})"


@dataclass(frozen=True)
class RunPlan:
    run: Run
    examples: int | None
    examples_source: str  # "file" | "expected" | "missing"
    train: int
    heldout: int
    steps: int | None
    checkpoints: int | None
    disk_gb: float | None
    gpu_hours: float | None
    state: str
    done_checkpoints: int
    eval_gpu_hours: float | None = None  # (checkpoints + 1) x seconds per evaluated checkpoint


def steps_for(n_train: int, cfg: Config) -> int:
    """Optimizer steps the Trainer will take (same formula as transformers and accelerate: with N
    processes each one gets ceil(batches / N) batches of the epoch)."""
    t = cfg.training
    batches = math.ceil(math.ceil(n_train / t.per_device_batch_size) / train_world_size(cfg))
    per_epoch = max(math.ceil(batches / t.grad_accum), 1)
    steps = math.ceil(t.epochs * per_epoch)
    return min(steps, t.max_steps) if t.max_steps else steps


def checkpoints_for(steps: int, every: int) -> int:
    """Checkpoints saved: every ``every`` steps, plus the last step when it is off the grid."""
    return steps // every + (1 if steps % every else 0)


def kept_checkpoints(steps: int, cfg: Config) -> int:
    """Checkpoints left on disk: all of them, or with keep_every only its grid plus the last."""
    ck = cfg.checkpointing
    return checkpoints_for(steps, ck.keep_every or ck.every_steps)


def checkpoint_bytes(cfg: Config, arch: Arch) -> tuple[float, float]:
    """(bytes of one checkpoint as evaluated, bytes of one set of resume state)."""
    if cfg.training.method == "lora":
        p = arch.lora_params(cfg.lora.r, cfg.lora.target_modules)
        return 4.0 * p, 8.0 * p  # fp32 adapter (peft's default); Adam's two fp32 moments
    p = arch.params()
    width = 4.0 if cfg.model.dtype == "float32" else 2.0  # bf16/fp16 (auto: assume bf16)
    return width * p, 12.0 * p  # fp32 master weights + two fp32 Adam moments


def _mean_tokens(path: Path) -> float:
    with open(path, "rb") as fh:
        lines = [ln for ln in fh if ln.strip()]
    return max(1.0, sum(len(ln) for ln in lines) / max(len(lines), 1) / CHARS_PER_TOKEN)


def plan_runs(cfg: Config, runs: Sequence[Run]) -> list[RunPlan]:
    """A plan row per run."""
    arch, _ = model_arch(cfg)
    out: list[RunPlan] = []
    tok_cache: dict[str, float] = {}
    prof = load_profile(cfg.cluster.profile) if cfg.cluster.profile else None
    eval_s, _ = eval_seconds(cfg, prof)
    for run in runs:
        c = run.config
        f = Path(run.data_file)
        if f.is_file():
            n, src = count_lines(f), "file"
            if run.data_file not in tok_cache:
                tok_cache[run.data_file] = _mean_tokens(f)
            tokens = tok_cache[run.data_file]
        elif run.domain in c.data.expected_examples:
            n, src, tokens = c.data.expected_examples[run.domain], "expected", DEFAULT_TOKENS_PER_EXAMPLE
        else:
            n, src, tokens = None, "missing", DEFAULT_TOKENS_PER_EXAMPLE
        state, done = run_state(run)
        if n is None:
            out.append(RunPlan(run, None, src, 0, 0, None, None, None, None, state, done))
            continue
        n_train, n_held = split_sizes(n, c.data.heldout_fraction, c.data.max_examples)
        steps = steps_for(n_train, c)
        ckpts = checkpoints_for(steps, c.checkpointing.every_steps)
        disk = hours = None
        if arch is not None:
            lora = c.training.method == "lora"
            world = train_world_size(c)
            per_ckpt, resume = checkpoint_bytes(c, arch)
            # The kept checkpoints, plus resume state on the newest keep_resume_state of them.
            disk = (kept_checkpoints(steps, c) * per_ckpt + c.checkpointing.keep_resume_state * resume) / 1e9
            train_tokens = steps * c.training.per_device_batch_size * c.training.grad_accum * world * tokens
            held_n = min(n_held, c.checkpointing.heldout_max_examples or n_held)
            eval_tokens = (ckpts + 1) * held_n * tokens
            flops = (4 if lora else 6) * arch.params() * train_tokens + 2 * arch.params() * eval_tokens
            # Every checkpoint writes the model (or adapter); resume state is written on the
            # resume_state_every grid (every checkpoint by default), at an assumed WRITE_GBPS.
            # Every GPU of the run waits for the writes.
            write_s = (ckpts * per_ckpt + resume_writes(steps, c) * resume) / (WRITE_GBPS * 1e9)
            tflops, _ = train_rate(c, prof)
            hours = (flops / (tflops * 1e12) + write_s * world) / 3600
        out.append(RunPlan(run, n, src, n_train, n_held, steps, ckpts, disk, hours, state, done,
                           eval_gpu_hours=(ckpts + 1) * eval_s / 3600))
    return out


def resume_writes(steps: int, cfg: Config) -> int:
    """How many checkpoints of a run write resume state."""
    ck = cfg.checkpointing
    return checkpoints_for(steps, ck.every_steps) if ck.resume_state_every is None else steps // ck.resume_state_every


@dataclass(frozen=True)
class PlanTotals:
    """The plan table's bottom line, and where its estimates come from."""

    runs: int
    checkpoints: int  # over the runs whose example count is known
    disk_gb: float
    gpu_hours: float  # training
    eval_gpu_hours: float  # scoring only (the cost plan adds task start-up)
    shapes_source: str  # "config.json", "table" or "nowhere"
    rate_source: str
    eval_source: str


def plan_totals(cfg: Config, rows: Sequence[RunPlan]) -> PlanTotals:
    """The totals of ``rows`` and the sources of their estimates (the table and --json print these)."""
    arch, arch_src = model_arch(cfg)
    known = [r for r in rows if r.checkpoints is not None]
    prof = load_profile(cfg.cluster.profile) if cfg.cluster.profile else None
    return PlanTotals(len(rows), sum(r.checkpoints or 0 for r in known), sum(r.disk_gb or 0 for r in known),
                      sum(r.gpu_hours or 0 for r in known), sum(r.eval_gpu_hours or 0 for r in known),
                      arch_src if arch else "nowhere", train_rate(cfg, prof)[1], eval_seconds(cfg, prof)[1])


def run_plan_json(r: RunPlan) -> dict[str, object]:
    """One row of the plan table as plain JSON values (unrounded; null where the table says '?')."""
    run = r.run
    return {
        "name": run.name, "hash": run.hash, "domain": run.domain, "level": run.level, "seed": run.seed,
        "variant": run.variant, "dir": run.run_dir, "data_file": run.data_file,
        "examples": r.examples, "examples_source": r.examples_source, "train": r.train, "heldout": r.heldout,
        "steps": r.steps, "checkpoints": r.checkpoints, "disk_gb": r.disk_gb, "gpu_hours": r.gpu_hours,
        "eval_gpu_hours": r.eval_gpu_hours, "state": r.state, "done_checkpoints": r.done_checkpoints,
    }


def format_plan(cfg: Config, rows: Sequence[RunPlan], will_submit: Sequence[str]) -> str:
    """The table --dry-run prints."""
    arch, _ = model_arch(cfg)
    t = cfg.training
    method = f"LoRA r={cfg.lora.r}" if t.method == "lora" else "full fine-tuning"
    world = train_world_size(cfg)
    where = f"; {world} GPUs per run" if world > 1 else ""
    where += f"; DeepSpeed {t.deepspeed}" if t.deepspeed else ""
    head = [
        f"Model {cfg.model.name} ({method}{where}); batch {t.per_device_batch_size} x accum {t.grad_accum}"
        f"{f' x {world} GPUs' if world > 1 else ''}, "
        f"{t.epochs:g} epoch(s); a checkpoint every {cfg.checkpointing.every_steps} steps",
        f"Output root: {paths.output_root(cfg.cluster.output_root)}",
    ]
    w = max([22] + [len(r.run.name) + 2 for r in rows])  # schedule-sweep names are long
    cols = (f"{'run':<{w}}{'hash':<10}{'examples':>9}{'train':>7}{'held':>6}{'steps':>7}{'ckpts':>7}{'disk GB':>9}"
            f"{'GPU-h':>7}{'eval GPU-h':>11}  state")
    lines = head + ["", cols, "-" * len(cols)]
    def fmt(v: float | int | None, spec: str) -> str:
        if v is None:
            return "?"
        if isinstance(v, float) and 0 < v < 0.01:
            return "<0.01"
        return format(v, spec)

    for r in rows:
        ex = fmt(r.examples, "d") + ("*" if r.examples_source == "expected" else "")
        state = r.state + (f" ({r.done_checkpoints} ckpts)" if r.state == "partial" else "")
        if r.run.name in will_submit:
            state += ", will submit"
        lines.append(f"{r.run.name:<{w}}{r.run.hash:<10}{ex:>9}{r.train:>7}{r.heldout:>6}{fmt(r.steps, 'd'):>7}"
                     f"{fmt(r.checkpoints, 'd'):>7}{fmt(r.disk_gb, '.2f'):>9}{fmt(r.gpu_hours, '.2f'):>7}"
                     f"{fmt(r.eval_gpu_hours, '.2f'):>11}  {state}")
    known = [r for r in rows if r.checkpoints is not None]
    tot = plan_totals(cfg, rows)
    lines += ["-" * len(cols),
              f"{tot.runs} runs, {tot.checkpoints} checkpoints, ~{tot.disk_gb:.1f} GB, ~{tot.gpu_hours:.1f} training "
              f"GPU-hours + ~{tot.eval_gpu_hours:.1f} evaluation GPU-hours (scoring; with task start-up in the cost "
              f"table) (estimates: shapes from {tot.shapes_source}, chars/{CHARS_PER_TOKEN:g} tokens, "
              f"checkpoints written at {WRITE_GBPS:g} GB/s)",
              f"Training rate: {tot.rate_source}",
              f"Evaluation: {tot.eval_source}"]
    if any(r.examples_source == "expected" for r in rows):
        lines.append("* data file not on this machine: count from data.expected_examples "
                     "(the run's hash includes the file's content, so it changes once the file is here)")
    if arch is not None:
        lines += disk_advice(cfg, arch, known)
        lines += activation_disk(cfg, arch, known)
    lines.append(f"Would submit {len(will_submit)} job(s)" + (f": {', '.join(will_submit)}" if will_submit else ""))
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalRunPlan:
    """One run's planned evaluation (``emt eval``): its checkpoints, those already scored, and the
    array tasks (each a list of checkpoint steps) that score the rest."""

    run: Run
    targets: int  # checkpoints to score in all, step 0 included (0 without a complete checkpoint)
    todo: list[int]  # the steps not scored yet
    shards: list[list[int]]  # one list of steps per array task ([] when --tasks auto found no fit)
    sizing: tuple[str, ...] = ()  # --tasks auto: the arithmetic behind the array's size
    fits: bool = True  # False: --tasks auto found no array that fits (the launch's problems say why)
    # Steps whose answers wait for Batch API batches: no array task (no GPU) for them; the
    # consolidation job harvests them.
    waiting: list[int] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.targets - len(self.todo) - len(self.waiting)

    def lines(self, ehash: str) -> list[str]:
        """What the human dry run prints for this run (nothing when it does not fit: its problem says why)."""
        if not self.fits:
            return []
        return [f"{self.run.name}: {self.scored} of {self.targets} checkpoints scored (eval {ehash}); "
                f"{len(self.todo)} to score in {len(self.shards)} task(s)"
                + (f"; {len(self.waiting)} submitted to the Batch API, harvested by the consolidation job"
                   if self.waiting else "")] + \
            [f"  --tasks auto: {line}" for line in self.sizing]

    def to_json(self, ehash: str) -> dict[str, object]:
        """The same as plain JSON values, with where the results (``eval_dir``) and scores go."""
        run = self.run
        return {"name": run.name, "hash": run.hash, "domain": run.domain, "level": run.level, "seed": run.seed,
                "variant": run.variant, "dir": run.run_dir, "eval_dir": str(eval_root(run, ehash)),
                "scores": str(paths.scores_file(run.path)), "checkpoints": self.targets, "scored": self.scored,
                "to_score": list(self.todo), "tasks": [list(sh) for sh in self.shards], "sizing": list(self.sizing),
                "fits": self.fits, "batch_waiting": list(self.waiting)}


def disk_advice(cfg: Config, arch: Arch, rows: Sequence[RunPlan]) -> list[str]:
    """Warnings, with numbers, when checkpoints would exceed cluster.disk_budget_gb or their
    resume state would dominate the writes; each says what to change."""
    out: list[str] = []
    ck = cfg.checkpointing
    per_ckpt, resume = checkpoint_bytes(cfg, arch)
    steps = [r.steps for r in rows if r.steps]
    if not steps:
        return out

    def total_gb(keep_every: int | None) -> float:
        k = keep_every or ck.every_steps
        return sum(checkpoints_for(s, k) * per_ckpt + ck.keep_resume_state * resume for s in steps) / 1e9

    n_ckpt = sum(checkpoints_for(s, ck.every_steps) for s in steps)
    now = total_gb(ck.keep_every)
    budget = cfg.cluster.disk_budget_gb
    if budget is not None and now > budget:
        kept = sum(checkpoints_for(s, ck.keep_every or ck.every_steps) for s in steps)
        out.append(f"WARNING: ~{now:,.1f} GB of checkpoints exceeds cluster.disk_budget_gb={budget:g}: {kept} kept "
                   f"checkpoint(s) x {per_ckpt / 1e9:,.2f} GB ({'LoRA adapter' if cfg.training.method == 'lora' else 'full model'}"
                   f") + resume state {resume / 1e9:,.2f} GB x {ck.keep_resume_state} per run, over {len(steps)} run(s).")
        fits = next((k for k in range(ck.every_steps, max(steps) + ck.every_steps, ck.every_steps)
                     if total_gb(k) <= budget), None)
        if fits is not None and fits != ck.keep_every:
            out.append(f"  - checkpointing.keep_every={fits} keeps every {fits}th step's checkpoint (~{total_gb(fits):,.1f} GB); "
                       f"the others are deleted once a newer one is complete, so score them while they exist "
                       f"(evaluation on the fly) or lose their steps")
        elif fits is None:
            out.append(f"  - even one checkpoint per run (~{total_gb(max(steps)):,.1f} GB) exceeds it: "
                       f"raise cluster.disk_budget_gb or train fewer runs at once (--runs)")
        out.append("  - or evaluate checkpoints while training runs and keep only a grid: the follow mode of the "
                   "eval launcher (issue 8), where available, with checkpointing.keep_every; or raise the budget")
    if ck.resume_state_every is None and resume >= per_ckpt:
        out.append(f"NOTE: resume state ({resume / 1e9:,.2f} GB) is written at all {n_ckpt} checkpoints, "
                   f"{resume / per_ckpt:.0f}x the checkpoint itself (~{resume / (WRITE_GBPS * 1e9):,.1f} s each at "
                   f"{WRITE_GBPS:g} GB/s); checkpointing.resume_state_every=N writes it every N steps (a restart "
                   f"then redoes at most N steps)")
    return out


def activation_disk(cfg: Config, arch: Arch, rows: Sequence[RunPlan]) -> list[str]:
    """The plan line for activation capture (``activations.layers``): bytes per checkpoint and in
    all the runs' scores.h5 files (step 0 included), with the arithmetic."""
    a = cfg.activations
    if not a.layers:
        return []
    try:
        n_q = sum(len(t.questions) for t in load_traits(cfg))
    except Exception as exc:  # noqa: BLE001 - the eval preflight reports bad traits; the plan just says why
        return [f"Activations: size unknown ({exc})"]
    answers = n_q * cfg.eval.samples_per_question
    per = bytes_per_checkpoint(n_q, answers, a.train_prompts, len(a.layers), arch.hidden, a.dtype)
    n = sum((r.checkpoints or 0) + 1 for r in rows)
    return [f"Activations (activations.layers={list(a.layers)}): {per / 1e6:,.1f} MB per checkpoint "
            f"((2 x {n_q} eval prompts + {answers} answers + 2 x {a.train_prompts} training prompts) x "
            f"{len(a.layers)} layer(s) x {arch.hidden} x {a.dtype}), ~{per * n / 1e9:,.2f} GB in scores.h5 over "
            f"{n} checkpoints (step 0 included), as much again in the eval dirs' step-N.act.npz"]
