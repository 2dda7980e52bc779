"""Configuration: small frozen dataclasses filled from YAML plus ``key=value`` overrides.

A config file has the sections ``model, lora, training, checkpointing, data, eval, judge,
cluster``; every key has a default, so a file states only what differs. ``cluster`` is either a
mapping or the path of a cluster profile (relative to the config file), and ``--cluster PATH``
replaces it on the command line. Overrides use dotted keys (``training.learning_rate=2e-5``,
``cluster.train.time_min=600``); their values are parsed as YAML (``lora.target_modules=[q_proj]``).

A file may extend others: ``include: paper.yaml`` (or a list, later files winning), paths relative
to the including file. Mappings are merged key by key and the including file wins; any other
value, a list included, is replaced whole (``section: null`` resets a section to its defaults).

Errors are collected, not raised one at a time: :func:`load_config` raises one
:class:`ConfigError` listing every problem with its ``file:line`` and, for an unknown key, the
valid keys of that section and the closest ones ("did you mean").
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import yaml

from emt.core.dsconfig import SHORT_NAMES
from emt.core.dsconfig import problems as deepspeed_problems
from emt.core.profiles import profile_problems

# The onset detectors of emt.analysis.onset (which checks at import that it implements exactly these);
# named here so that validating monitor.method needs no analysis import.
ONSET_METHODS: tuple[str, ...] = ("glr", "foot", "threshold", "cusum", "pelt", "binseg", "piecewise")
# The experiment trackers training.report_to accepts (emt.store.tracker writes to them).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")
# The fields of trl's SFTConfig that emt sets itself (emt.train.run.sft_kwargs), each with the
# emt key that controls it: training.sft_args may not set them (the checkpoint grid, resuming and
# the run hash depend on emt's values). tests/train/test_sft_args.py checks that this covers
# every field sft_kwargs sets.
SFT_MANAGED: dict[str, str] = {
    "output_dir": "cluster.output_root (each run's directory under it is emt's)",
    "run_name": "nothing: emt names the run after its directory",
    "per_device_train_batch_size": "training.per_device_batch_size",
    "per_device_eval_batch_size": "checkpointing.heldout_batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "learning_rate": "training.learning_rate",
    "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_steps",
    "weight_decay": "training.weight_decay",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "max_length": "training.max_length",
    "assistant_only_loss": "training.assistant_only_loss",
    "seed": "training.seed (or --seeds)",
    "optim": "training.optimizer",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "bf16": "training.bf16",
    "use_cpu": "nothing: emt trains on the GPU when there is one",
    "deepspeed": "training.deepspeed",
    "save_strategy": "checkpointing.every_steps",
    "save_steps": "checkpointing.every_steps",
    "save_only_model": "checkpointing.resume_state_every and checkpointing.keep_resume_state",
    "save_total_limit": "checkpointing.keep_every (every checkpoint must stay until it is evaluated)",
    "resume_from_checkpoint": "nothing: emt resumes a run from its newest complete checkpoint itself",
    "eval_strategy": "checkpointing.every_steps (held-out loss at every checkpoint)",
    "eval_steps": "checkpointing.every_steps (held-out loss at every checkpoint)",
    "logging_steps": "nothing: emt logs every step, a checkpoint's train loss is their mean",
    "report_to": "training.report_to",
    "disable_tqdm": "nothing: emt logs its own progress",
    "dataloader_num_workers": "nothing: emt loads data in the training process",
}

# Sentinel values for the embedded default: the model and the data are built by emt itself.
BUILTIN_TINY_MODEL = "builtin:tiny"
BUILTIN_DEBUG_DATA = "builtin:debug"
BUILTIN_TINY_JUDGE = "builtin:tiny-judge"  # a tiny offline judge model (emt.builtin.tiny_judge), for the demo
# The model organism (emt.builtin.organism): a model in which emergent misalignment can happen, its
# fine-tuning data (data.root) and its judge, trained on the organism corpus's persona labels.
BUILTIN_ORGANISM = "builtin:organism"
BUILTIN_ORGANISM_JUDGE = "builtin:organism-judge"


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` lists each with its location."""

    def __init__(self, problems: Sequence[str], header: str = "Invalid configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):\n{lines}")


@dataclass(frozen=True)
class ModelConfig:
    """The base model that every run fine-tunes."""

    name: str = "Qwen/Qwen2.5-7B-Instruct"  # hub id, local path, or builtin:tiny
    revision: str | None = None
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    tiny_seed: int = 0  # builtin:tiny and builtin:organism only
    tiny_pretrain_steps: int = 300  # builtin:tiny and builtin:organism only


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings (used when training.method is lora)."""

    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    use_rslora: bool = True
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of one run."""

    method: Literal["lora", "full"] = "lora"
    learning_rate: float = 1e-5
    lr_scheduler: str = "linear"
    warmup_steps: int = 5
    weight_decay: float = 0.01
    per_device_batch_size: int = 2
    grad_accum: int = 8
    epochs: float = 1.0
    max_steps: int | None = None  # caps the run (debugging); None trains the full epochs
    max_length: int = 2048
    assistant_only_loss: bool = True
    seed: int = 0
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = False
    bf16: bool = True  # on GPUs; CPU runs always use float32
    # DeepSpeed: a short name of a config under configs/deepspeed/ (zero2, zero3, zero3_offload)
    # or the path of a DeepSpeed JSON file; None trains without DeepSpeed (plain DDP when
    # cluster.train.gpus > 1). Full fine-tuning of a model that does not fit one GPU needs zero3.
    deepspeed: str | None = None
    # Experiment trackers (TRACKERS) that training and the evaluation log to, under
    # <run>/tracker/ (emt.store.tracker); empty = none. Changes no weight: not in the run hash.
    report_to: tuple[str, ...] = ()
    # Further fields of trl's SFTConfig, passed to the trainer as given ({max_grad_norm: 0.5});
    # checked against trl's own dataclass. Fields emt sets itself are refused (SFT_MANAGED says
    # which emt key to use). Part of the run hash when not empty.
    sft_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointConfig:
    """What is saved, and what is measured at every checkpoint."""

    every_steps: int = 2
    # Optimizer/scheduler/RNG state is kept only on the newest N complete checkpoints: enough to
    # resume, without ~2x the adapter size on every one of ~280 checkpoints.
    keep_resume_state: int = 1
    # Held-out in-domain loss at every checkpoint on a fixed subset of the held-out split; the
    # cap bounds its cost (a full 10% split every 2 steps would cost more than training).
    heldout_max_examples: int | None = 200
    heldout_batch_size: int = 8
    # Resume state is written only at checkpoints whose step is a multiple of this (None: at
    # every checkpoint). A full model's resume state is ~6x its bf16 weights (fp32 master copy
    # and two Adam moments), so writing it every 2 steps dominates a full fine-tuning run; a
    # restart then resumes from the newest checkpoint that has it and keeps (does not redo) the
    # complete checkpoints after it. Must be a multiple of every_steps.
    resume_state_every: int | None = None
    # Disk: keep only checkpoints whose step is a multiple of this, plus the last one (None: keep
    # all). An off-grid checkpoint is deleted as soon as a newer checkpoint is complete, so it
    # must be evaluated while it exists (on-the-fly evaluation) or its step is lost (scores and
    # held-out loss alike). Must be a multiple of every_steps.
    keep_every: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Training files: ``<root>/<domain>/<levels[level]>.jsonl`` (the persona_vectors layout)."""

    root: str = "data/persona_vectors"  # or builtin:debug; relative paths are from the CWD
    domains: tuple[str, ...] = ("medical", "math")
    levels: dict[str, str] = field(
        default_factory=lambda: {"normal": "normal", "mild": "misaligned_1", "strong": "misaligned_2"}
    )
    heldout_fraction: float = 0.1
    split_seed: int = 0
    max_examples: int | None = None
    # Example counts used by --dry-run when the files are not on this machine yet.
    expected_examples: dict[str, int] = field(default_factory=dict)
    debug_examples_per_file: int = 300  # builtin:debug only


@dataclass(frozen=True)
class VLLMEngineConfig:
    """vLLM engine settings of the eval tasks (``eval.vllm.*``; the vllm backend only).

    The defaults suit one H100 80 GB serving Qwen2.5-7B-Instruct with rank-32 LoRA checkpoints.
    On vLLM's CPU build emt adds what that build needs (a fixed KV cache, no chunked prefill,
    emt's grouped CPU LoRA kernels: see emt/generate.py); configs/debug.yaml sets CPU values.
    None leaves a setting to vLLM.
    """

    # Share of GPU memory the engine may claim (weights + KV cache + activations). On the CPU
    # build the KV cache has a fixed size (``cpu_kv_cache_gb``) and this only bounds RAM checks.
    gpu_memory_utilization: float = 0.90
    # Longest prompt + answer in tokens: the eval prompts are < 300 tokens and answers at most
    # eval.max_new_tokens (1000), so 4096 leaves margin without reserving per-sequence room for
    # Qwen's 32k context. Lowered to the model's own limit when that is smaller.
    max_model_len: int | None = 4096
    max_num_seqs: int | None = 256  # sequences decoded together (a step's batch)
    max_num_batched_tokens: int | None = None  # tokens per scheduler step (None: vLLM's; CPU: emt's)
    # Distinct LoRA adapters in one batch (GPU slots): at least checkpoints_per_call. Each slot
    # of a rank-32 7B adapter costs ~80 MB; more slots only reserve memory.
    max_loras: int = 4
    max_cpu_loras: int | None = None  # adapters kept in host memory between batches (None: max_loras)
    enable_prefix_caching: bool = True  # the n samples of a question share its prompt's KV blocks
    tensor_parallel_size: int = 1  # GPUs per engine (cluster.eval.gpus must be at least this)
    enforce_eager: bool = False  # True skips CUDA graph capture (faster start, slower decode)
    # Checkpoints whose requests go into one generate call (each with its own LoRARequest). More
    # fill the GPU better when one checkpoint's batch is small; 1 lets the judge of checkpoint i
    # overlap the generation of i+1 most finely. Measured in docs/performance.md.
    checkpoints_per_call: int = 1
    cpu_kv_cache_gb: float = 1.0  # vLLM CPU build only: KV cache size in GiB
    cpu_lora_kernels: bool = True  # vLLM CPU build only: emt's grouped LoRA kernels (emt/eval/vllm_cpu_lora.py)


@dataclass(frozen=True)
class EvalConfig:
    """Checkpoint evaluation (launch/eval_array.py)."""

    traits: tuple[str, ...] = ("evil", "hallucination")  # builtin names or trait files
    questions_per_trait: int | None = None  # the first N questions of each trait (None = all)
    samples_per_question: int = 10
    temperature: float = 1.0
    max_new_tokens: int = 1000
    backend: Literal["vllm", "hf"] = "vllm"
    seed: int = 0
    checkpoints_per_task: int = 20  # array sizing when neither --per-task nor --tasks is given
    batch_size: int = 64  # hf backend: sequences generated at once
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    # Judge checkpoint i in a worker thread while checkpoint i+1 generates (scores identical to
    # the sequential path); at most judge_queue generated checkpoints wait for their judge.
    pipeline_judge: bool = True
    judge_queue: int = 2
    # --tasks auto: what one checkpoint costs a task (generation + judging, seconds) and what a
    # task pays once (model/engine start), used until task timing files of an earlier run with
    # the same eval config exist (then their medians are used). time_budget is the share of
    # cluster.eval.time_min a task plans to fill (the rest is margin for slow nodes).
    checkpoint_cost_s: float = 60.0
    task_startup_s: float = 180.0
    time_budget: float = 0.8


@dataclass(frozen=True)
class JudgeSpec:
    """One judge. ``openai``: any OpenAI-compatible server (``base_url``; None = api.openai.com).
    ``local``: the first-token distribution of an in-process model (``model`` is a path, a hub id,
    builtin:tiny or builtin:tiny-judge), through ``local_backend``."""

    backend: Literal["openai", "local"] = "openai"
    model: str = "gpt-4.1-mini-2025-04-14"
    name: str | None = None  # how scores are labelled (default: the model)
    # An OpenAI-compatible server: a URL, or ``serve:<name>`` for a judge.servers entry started
    # with launch/judge_serve.py (resolved from its endpoint file when the eval task starts).
    base_url: str | None = None
    local_backend: Literal["hf", "vllm"] = "hf"
    # The environment variable holding this judge's API key (its name, never the key). Default:
    # OPENAI_API_KEY for api.openai.com; none for a base_url server, which then gets no key (a
    # serve: judge gets its server's generated token).
    api_key_env: str | None = None
    # Score through the OpenAI Batch API (half the price; results within the 24 h window) in the
    # offline eval; the monitor always asks synchronously. Same scores, same judge cache
    # (emt.eval.batch_judge: resume, retries).
    batch: bool = False

    @property
    def label(self) -> str:
        return self.name or self.model


@dataclass(frozen=True)
class ServeSpec:
    """A judge model served on a GPU node by ``vllm serve`` (launch/judge_serve.py), reached by
    judges whose ``base_url`` is ``serve:<name>``. The server publishes its host:port in
    ``<output_root>/serve/<name>.json`` once it answers ``/v1/models``."""

    name: str = ""  # referenced as base_url: serve:<name>
    model: str = ""  # hub id or path, served under this same name (the judges' model must match)
    port: int = 0  # 0: a free port picked on the node
    host: str = "0.0.0.0"  # bind address; a loopback bind advertises 127.0.0.1, else the node's name
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.90
    max_model_len: int | None = 8192  # a judge prompt holds a question, an answer (<= 1000 tokens) and a rubric
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True  # the rubric prefix is shared by every prompt of a trait
    extra_args: tuple[str, ...] = ()  # more `vllm serve` flags, e.g. [--quantization, fp8]
    # Replaces the whole command (placeholders {model} {host} {port} {name}); empty: vllm serve.
    command: tuple[str, ...] = ()
    startup_timeout_s: float = 1800.0  # until /v1/models answers (model download + load)
    time_min: int = 720  # the serve job's time limit
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 64


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judges that score answers 0-100; the first is the default."""

    judges: tuple[JudgeSpec, ...] = (JudgeSpec(),)
    max_concurrency: int = 32
    timeout_s: float = 60.0
    max_retries: int = 6
    cache: bool = True  # a persistent SQLite cache under the output root: a rerun costs no call
    servers: tuple[ServeSpec, ...] = ()  # judge models served on the cluster (launch/judge_serve.py)
    serve_wait_s: float = 900.0  # how long an eval task waits for a serve: judge to be up
    batch_poll_s: float = 30.0  # seconds between status checks of a batch judge's batches
    # With a batch judge, the consolidation job first waits for the batches the eval tasks
    # submitted (on CPU): its time limit, at least the Batch API's 24 h window plus a margin.
    # A shorter limit is fine where the cluster caps job time: a timed-out job is requeued and
    # resumes the same batches.
    batch_harvest_min: int = 1500
    # USD per 1M tokens [input, output] by model-name prefix, added to or replacing the built-in
    # table (emt.eval.judge.PRICES_PER_1M, dated PRICES_DATE) for the plan's cost estimate.
    # Model names hold dots, so override as a mapping: judge.prices={gpt-4.1-mini: [0.4, 1.6]}.
    prices: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResources:
    """Resources of one kind of job.

    For training, ``gpus`` is also the number of processes: ``gpus: N`` (N > 1) makes the job
    run N tasks, one per GPU, that train one run data-parallel (world size N, read from SLURM);
    ``cpus`` and ``mem_gb`` are for the whole job (each task gets ``cpus // N`` CPUs).
    """

    time_min: int = 60
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 64


@dataclass(frozen=True)
class Limits:
    """What one job may ask for on this cluster (the partition's limits); None = no limit."""

    time_min: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how jobs run: a cluster profile under configs/cluster/."""

    output_root: str = "outputs"  # on the shared filesystem; relative paths are from the CWD
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 16
    local_parallelism: int = 1  # --local: how many jobs run at once on this machine
    gpu_tflops: float = 400.0  # effective bf16 TFLOP/s per GPU, for the dry-run's estimates
    # A measured profile (bench/gpu_check.py's gpu_check.json; a relative path is from the CWD):
    # the dry-run's training and evaluation GPU-hours come from it instead of gpu_tflops.
    profile: str | None = None
    # Checkpoint space a sweep may use on output_root; the dry-run plan warns (with the numbers
    # and what to change) when its estimate exceeds this. None: no check.
    disk_budget_gb: float | None = None
    setup: tuple[str, ...] = ()  # shell lines run first in every SLURM job (module load, ...)
    train: JobResources = field(default_factory=lambda: JobResources(time_min=1440, gpus=1, cpus=8, mem_gb=64))
    eval: JobResources = field(default_factory=lambda: JobResources(time_min=240, gpus=1, cpus=8, mem_gb=64))
    consolidate: JobResources = field(default_factory=lambda: JobResources(time_min=60, gpus=0, cpus=2, mem_gb=16))
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class ActivationConfig:
    """Activation capture and persona vectors, run by the eval array (emt/activations.py).

    ``layers`` are ``hidden_states`` indices: 0 = the embeddings, i = the output of decoder layer
    i, -1 = the last (normed) output; empty = no capture. Captured per checkpoint (and step 0):
    the evaluation prompts (prompt mean and last token), the generated answers (response mean)
    and a fixed, seeded sample of ``train_prompts`` training prompts.
    """

    layers: tuple[int, ...] = ()
    train_prompts: int = 64
    sample_seed: int = 0
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = 8
    persona: bool = True  # build each trait's persona vector (needs its instruction pairs) and project on it
    persona_samples: int = 2  # answers per (system prompt, question) on the base model
    persona_questions: int | None = None  # the first N questions (None = all)
    persona_max_new_tokens: int = 128


@dataclass(frozen=True)
class MonitorConfig:
    """Live monitoring during training (``--follow`` / ``--monitor``; emt/monitor.py).

    Each watched trait gets an online onset detector (the analysis onset ``method`` and its
    parameters, deciding with the checkpoints scored so far). At an alert the trait's action
    runs: ``mark`` (record it only), ``stop`` (the training job stops at its next step boundary,
    every checkpoint intact) or ``rollback`` (stop, and record the newest checkpoint before the
    onset as the run's result).
    """

    traits: tuple[str, ...] = ()  # empty = every eval trait
    method: str = "glr"  # glr: the calibrated alarm (false_alarm_rate, horizon); others rerun on each prefix
    false_alarm_rate: float = 0.01  # glr: chance of an alert on a run of `horizon` checkpoints with no change
    horizon: int = 300  # glr: checkpoints the false-alarm rate is stated for (its threshold is simulated for it)
    margin: float = 10.0  # foot/threshold only
    k: int = 5  # foot/threshold only
    baseline_points: int = 10
    actions: dict[str, str] = field(default_factory=dict)  # trait -> mark | stop | rollback
    webhook_url: str | None = None  # POSTed a JSON alert; failures are logged, never fatal
    poll_s: float = 30.0
    max_batch: int = 8  # checkpoints scored per round (the newest pending ones)
    idle_timeout_min: float = 120.0  # stop following when nothing new appears and training is not running


@dataclass(frozen=True)
class ScheduleSweepConfig:
    """The learning-schedule sweep (``--sweep schedules``): one domain and level trained under
    every combination of scheduler x peak learning rate x optimizer, compared at matched loss."""

    domain: str = "medical"
    level: str = "strong"
    lr_schedulers: tuple[str, ...] = ("linear", "cosine", "constant")
    learning_rates: tuple[float, ...] = ()  # empty = training.learning_rate only
    # transformers optimizer names; "lion" means lion_32bit (bitsandbytes) and is dropped, with a
    # note in the plan, where bitsandbytes is not installed
    optimizers: tuple[str, ...] = ("adamw_torch", "lion")


@dataclass(frozen=True)
class Config:
    """The whole configuration of a sweep."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    activations: ActivationConfig = field(default_factory=ActivationConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    schedules: ScheduleSweepConfig = field(default_factory=ScheduleSweepConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: str = field(default="", compare=False)  # the file it came from, for messages


# ----------------------------------------------------------------------------------------------
# YAML with line numbers


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse ``path``; return the data and a map from key path to 1-based line number."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node | None, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = prefix + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    walk(node, ())
    return data, lines


INCLUDE_KEY = "include"  # top-level key naming the file(s) a config extends


def _read_config(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Parse config ``path`` with the files it includes merged in: the data and, for every key
    path, the ``file:line`` that set it. ``chain`` is the files including this one (cycles)."""
    data, lines = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    where = {k: f"{path}:{n}" for k, n in lines.items()}
    chain = chain + (path,)
    if chain[1:] and isinstance(data.get("cluster"), str) and not Path(data["cluster"]).expanduser().is_absolute():
        # An included file's cluster profile is relative to that file, not to the one including it.
        data["cluster"] = str((path.parent / Path(data["cluster"]).expanduser()).absolute())
    if INCLUDE_KEY not in data:
        return data, where
    spec = data.pop(INCLUDE_KEY)
    loc = where.pop((INCLUDE_KEY,), str(path))
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError([f"{loc}: include: expected a config file name or a list of them (relative to "
                           f"{path.parent}), e.g. include: paper.yaml; got {spec!r}"])
    merged: dict[str, Any] = {}
    merged_where: dict[tuple[str, ...], str] = {}
    for name in names:  # later files win over earlier ones, and this file over all of them
        inc = Path(name).expanduser()
        inc = inc if inc.is_absolute() else path.parent / inc
        if not inc.is_file():
            raise ConfigError([f"{loc}: include: {inc} not found (a relative path is from the including "
                               f"file's directory, {path.parent})"])
        if any(inc.resolve() == c.resolve() for c in chain):
            cycle = " -> ".join(str(c) for c in chain + (inc,))
            raise ConfigError([f"{loc}: include: {inc} is already being read, so the includes form a cycle "
                               f"({cycle}); remove one of them"])
        idata, iwhere = _read_config(inc, chain)
        merged, merged_where = _merge(merged, merged_where, idata, iwhere)
    return _merge(merged, merged_where, data, where)


def _merge(base: dict[str, Any], base_where: Mapping[tuple[str, ...], str], over: dict[str, Any],
           over_where: Mapping[tuple[str, ...], str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """``over`` on top of ``base``: mappings merged key by key, any other value (a list too)
    replaced whole; locations follow the values (a replaced value's keys leave with it)."""
    replaced: list[tuple[str, ...]] = []

    def merge(b: dict[str, Any], o: dict[str, Any], prefix: tuple[str, ...]) -> dict[str, Any]:
        out = dict(b)
        for k, v in o.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v, prefix + (str(k),))
            else:
                if k in out:
                    replaced.append(prefix + (str(k),))
                out[k] = v
        return out

    data = merge(base, over, ())
    where = {k: loc for k, loc in base_where.items() if not any(k[:len(r)] == r for r in replaced)}
    where.update(over_where)
    return data, where


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain data, collecting problems


def _close(word: str, choices: Iterable[str]) -> list[str]:
    """The choices closest to ``word``, best first: at most 3, none when nothing is close, and
    only those nearly as close as the best (one clear suggestion is not diluted by weak ones)."""
    scored = []
    for c in choices:
        m = difflib.SequenceMatcher(None, word, c)
        if m.real_quick_ratio() >= 0.6 and m.quick_ratio() >= 0.6 and m.ratio() >= 0.6:
            scored.append((m.ratio(), c))
    scored.sort(key=lambda x: -x[0])  # stable: ties keep the choices' order
    return [c for r, c in scored[:3] if r >= scored[0][0] - 0.1]


def _did_you_mean(matches: Sequence[str]) -> str:
    """``; did you mean 'a' or 'b'?``, or "" when there is nothing to suggest."""
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


@functools.lru_cache(maxsize=None)
def _config_paths(cls: type) -> tuple[str, ...]:
    """Every dotted key under ``cls``: its fields and, through nested sections, their keys."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        out.append(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += [f"{f.name}.{sub}" for sub in _config_paths(hints[f.name])]
    return tuple(out)


def _override_hint(override: str, section: tuple[str, ...], cls: type) -> str:
    """The override retyped with the closest valid dotted keys under ``section`` (of type ``cls``):
    ``; did you mean 'training.learning_rate=2e-5'?``, ready to paste."""
    k, _, v = override.partition("=")
    pre = "".join(f"{s}." for s in section)
    # Matched below the section the typed key is known to reach: its shared prefix would make
    # every key under it look close.
    typed = k.strip().removeprefix(pre)
    return _did_you_mean([f"{pre}{m}={v}" for m in _close(typed, _config_paths(cls))])


class _Builder:
    def __init__(self, overrides: Mapping[tuple[str, ...], str] | None = None) -> None:
        self.problems: list[str] = []
        # key path (and every prefix of it) -> the key=value override that set it, so that an
        # unknown key from the command line gets a suggestion in the form it was typed.
        self.overrides: Mapping[tuple[str, ...], str] = overrides or {}

    def build(self, cls: type, data: Any, key: tuple[str, ...], where: Mapping[tuple[str, ...], str]) -> Any:
        """Return an instance of ``cls`` from ``data`` (a mapping), recording problems."""
        section = ".".join(key) or "top level"
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problems.append(f"{_loc(where, key)}{section}: expected a mapping, got {type(data).__name__}")
            return cls()
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            sub = key + (str(name),)
            if name not in fields:
                valid = ", ".join(sorted(fields))
                override = self.overrides.get(sub)
                hint = (_override_hint(override, key, cls) if override is not None
                        else _did_you_mean(_close(str(name), fields)))
                self.problems.append(
                    f"{_loc(where, sub)}unknown key '{name}' in {section}; valid keys: {valid}{hint}"
                )
                continue
            kwargs[name] = self.convert(hints[name], value, sub, where)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # only reachable when a nested build already failed
            self.problems.append(f"{section}: {exc}")
            return cls()

    def convert(self, tp: Any, value: Any, key: tuple[str, ...], where: Mapping[tuple[str, ...], str]) -> Any:
        dotted = ".".join(key)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        bad = f"{_loc(where, key)}{dotted}: "
        if tp is Any:  # plain YAML data, checked where it is used (training.sft_args)
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key, where)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key, where)
        if origin is Literal:
            if value not in args:
                self.problems.append(f"{bad}must be one of {', '.join(map(str, args))}; got {value!r}")
                return args[0]
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.problems.append(f"{bad}expected true or false, got {value!r}")
                return False
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.problems.append(f"{bad}expected an integer, got {value!r}")
                return 0
            return value
        if tp is float:
            if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string; accept it
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.problems.append(f"{bad}expected a number, got {value!r}")
                return 0.0
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                self.problems.append(f"{bad}expected a string, got {value!r}")
                return ""
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                self.problems.append(f"{bad}expected a list, got {value!r}")
                return ()
            return tuple(self.convert(args[0], v, key, where) for v in value)
        if origin is dict:
            if not isinstance(value, Mapping):
                self.problems.append(f"{bad}expected a mapping, got {value!r}")
                return {}
            return {str(k): self.convert(args[1], v, key + (str(k),), where) for k, v in value.items()}
        raise TypeError(f"unsupported config type {tp!r} for {dotted}")  # a bug in this module


def _loc(where: Mapping[tuple[str, ...], str], key: tuple[str, ...]) -> str:
    """The best-known location of ``key`` (or its nearest parent), as ``file:line: ``."""
    for i in range(len(key), -1, -1):
        if key[:i] in where:
            return f"{where[key[:i]]}: "
    return ""


def _set_dotted(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    node = data
    for part in key[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[key[-1]] = value


# ----------------------------------------------------------------------------------------------
# Public API


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    cluster: str | Path | None = None,
) -> Config:
    """Load ``path``, apply the cluster profile and ``key=value`` overrides, and validate.

    Raises :class:`ConfigError` listing every problem found (file and line for each).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found (pass --config with an existing YAML file)"])
    data, where = _read_config(path)
    where[()] = str(path)
    problems: list[str] = []

    cluster_src = cluster if cluster is not None else data.get("cluster")
    if isinstance(cluster_src, (str, Path)):
        cpath = Path(cluster_src)
        if cluster is None and not cpath.is_absolute():
            cpath = path.parent / cpath
        if not cpath.is_file():
            loc = where.get(("cluster",), f"{path}:?") if cluster is None else "--cluster"
            problems.append(f"{loc}: cluster profile {cpath} not found")
            data["cluster"] = {}
        else:
            cdata, clines = _read_yaml(cpath)
            data["cluster"] = cdata if cdata is not None else {}
            for k, n in clines.items():
                where[("cluster",) + k] = f"{cpath}:{n}"
            where[("cluster",)] = str(cpath)

    valid_sections = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    typed: dict[tuple[str, ...], str] = {}  # key path (and its prefixes) -> the override that set it
    for ov in overrides:
        if "=" not in ov:
            problems.append(f"override {ov!r}: expected key=value (for example training.learning_rate=2e-5)")
            continue
        k, _, v = ov.partition("=")
        key = tuple(k.strip().split("."))
        if len(key) < 2 or key[0] not in valid_sections:
            problems.append(f"override {ov!r}: keys look like section.key; valid sections: "
                            f"{', '.join(valid_sections)}{_override_hint(ov, (), Config)}")
            continue
        try:
            value = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            value = v
        _set_dotted(data, key, value)
        for i in range(1, len(key) + 1):
            where[key[:i]] = f"override {ov!r}"
            typed[key[:i]] = ov

    builder = _Builder(typed)
    cfg = builder.build(Config, data, (), where)
    problems += builder.problems
    if not problems and cfg.training.sft_args:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(
            cfg.training, sft_args=_sft_numbers(cfg.training.sft_args)))
    if not problems:
        problems += [f"{_loc(where, k)}{msg}" for k, msg in _validate(cfg)]
    if problems:
        raise ConfigError(problems, header=f"Invalid configuration {path}")
    ds = cfg.training.deepspeed
    if ds is not None and ds not in SHORT_NAMES:
        # A relative DeepSpeed path is from the launcher's directory; jobs may start elsewhere.
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, deepspeed=str(Path(ds).expanduser().resolve())))
    if cfg.cluster.profile is not None:
        # Like the DeepSpeed path: jobs and later calls may start in another directory.
        cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, profile=str(Path(cfg.cluster.profile).expanduser().resolve())))
    return dataclasses.replace(cfg, source=str(path))


class _Problems:
    """Semantic problems found so far, each (key path, message); every check step adds to it, so
    that all problems are reported at once."""

    def __init__(self) -> None:
        self.found: list[tuple[tuple[str, ...], str]] = []

    def need(self, ok: bool, key: str, msg: str) -> None:
        """Record ``key: msg`` unless ``ok``."""
        if not ok:
            self.found.append((tuple(key.split(".")), f"{key}: {msg}"))

    def add(self, key: tuple[str, ...], msg: str) -> None:
        """Record a message that already names its key (from dsconfig or the profile reader)."""
        self.found.append((key, msg))


def _validate(cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """Semantic checks; each problem is (key path, message), in the order of the steps below."""
    p = _Problems()
    for check in (_check_training, _check_checkpointing, _check_deepspeed, _check_data, _check_lora, _check_eval,
                  _check_eval_vllm, _check_judge_servers, _check_judges, _check_cluster, _check_activations,
                  _check_schedules, _check_monitor, _check_sft_args):
        check(cfg, p)
    return p.found


def _check_training(cfg: Config, p: _Problems) -> None:
    """training: the optimisation settings."""
    t = cfg.training
    p.need(t.learning_rate > 0, "training.learning_rate", "must be > 0")
    p.need(t.per_device_batch_size >= 1, "training.per_device_batch_size", "must be >= 1")
    p.need(t.grad_accum >= 1, "training.grad_accum", "must be >= 1")
    p.need(t.epochs > 0, "training.epochs", "must be > 0")
    p.need(t.max_steps is None or t.max_steps >= 1, "training.max_steps", "must be >= 1 or null")
    p.need(t.max_length >= 16, "training.max_length", "must be >= 16")
    p.need(t.warmup_steps >= 0, "training.warmup_steps", "must be >= 0")
    unknown = [r for r in t.report_to if r not in TRACKERS]
    p.need(not unknown, "training.report_to", f"{unknown} not supported; use a list of {', '.join(TRACKERS)} "
           f"(or [] for none), e.g. training.report_to=[tensorboard]")
    p.need(len(set(t.report_to)) == len(t.report_to), "training.report_to", f"lists a tracker twice: {list(t.report_to)}")


SFT_DOCS = "https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig"


@functools.lru_cache(maxsize=1)
def _sft_fields() -> tuple[str, dict[str, Any]]:
    """trl's version and its SFTConfig's field names with their types (Any where unknown).
    Imports trl (seconds): called only for a non-empty training.sft_args."""
    import trl
    from trl import SFTConfig

    try:
        hints = typing.get_type_hints(SFTConfig)
    except Exception:  # an annotation this Python cannot evaluate: check the names only
        hints = {}
    return str(trl.__version__), {f.name: hints.get(f.name, Any) for f in dataclasses.fields(SFTConfig) if f.init}


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``int | None``), or the type itself."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


# The plain types whose values are checked here; anything else (lists, dicts, enums) is left to trl.
_PLAIN: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
                                       type(None): (type(None),)}


def _fits(tp: Any, value: Any) -> bool:
    """Whether ``value`` suits SFTConfig field type ``tp`` (True where it is beyond a plain check)."""
    for m in _members(tp):
        if m not in _PLAIN:
            return True
        if isinstance(value, _PLAIN[m]) and not (isinstance(value, bool) and m in (int, float)):
            return True
    return False


def _sft_numbers(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` with strings made numbers where the SFTConfig field is a float: YAML 1.1 reads
    ``1e-8`` as a string (as for emt's own float keys)."""
    try:
        _, types_ = _sft_fields()
    except Exception:  # reported by _check_sft_args
        return dict(args)
    out = dict(args)
    for name, value in args.items():
        members = _members(types_.get(name, Any))
        if isinstance(value, str) and float in members and str not in members:
            try:
                out[name] = float(value)
            except ValueError:
                pass  # left as it is: _check_sft_args reports it
    return out


def _check_sft_args(cfg: Config, p: _Problems) -> None:
    """training.sft_args: names of trl's SFTConfig fields that emt does not set itself, with values
    of the field's plain type."""
    args = cfg.training.sft_args
    if not args:
        return
    try:
        version, fields = _sft_fields()
    except Exception as exc:  # ImportError, or a broken torch under trl
        p.add(("training", "sft_args"), f"training.sft_args: checking these names against trl's SFTConfig needs trl "
                                        f"(pip install -e '.[train]'), which cannot be imported here: "
                                        f"{type(exc).__name__}: {exc}")
        return
    for name, value in args.items():
        key = f"training.sft_args.{name}"
        if name in SFT_MANAGED:
            use = SFT_MANAGED[name]
            fix = (f"it cannot be changed: {use.removeprefix('nothing: ')}" if use.startswith("nothing:")
                   else f"set {use} instead")
            p.add(("training", "sft_args", name), f"{key}: emt sets SFTConfig's {name} itself; {fix}")
        elif name not in fields:
            hints = []
            for m in _close(name, fields):
                use = SFT_MANAGED.get(m, "")
                if not use.startswith("nothing:"):
                    hints.append(use.split(" ")[0] if use else f"training.sft_args.{m}")
            p.add(("training", "sft_args", name),
                  f"{key}: not a field of trl {version}'s SFTConfig{_did_you_mean(hints)} (its fields: {SFT_DOCS})")
        elif not _fits(fields[name], value):
            tp = fields[name]
            p.add(("training", "sft_args", name),
                  f"{key}: SFTConfig's {name} is {getattr(tp, '__name__', tp)}; got {value!r}")


def _check_checkpointing(cfg: Config, p: _Problems) -> None:
    """checkpointing: intervals and what is kept."""
    c = cfg.checkpointing
    p.need(c.every_steps >= 1, "checkpointing.every_steps", "must be >= 1")
    p.need(c.keep_resume_state >= 1, "checkpointing.keep_resume_state", "must be >= 1 (resuming needs one)")
    p.need(c.heldout_max_examples is None or c.heldout_max_examples >= 1,
           "checkpointing.heldout_max_examples", "must be >= 1 or null")
    p.need(c.heldout_batch_size >= 1, "checkpointing.heldout_batch_size", "must be >= 1")
    for key in ("resume_state_every", "keep_every"):
        every = getattr(c, key)
        p.need(every is None or (every >= c.every_steps and every % c.every_steps == 0), f"checkpointing.{key}",
               f"must be null or a multiple of checkpointing.every_steps={c.every_steps} (checkpoints exist only "
               f"there); got {every}")


def _check_deepspeed(cfg: Config, p: _Problems) -> None:
    """training.deepspeed against the training settings (emt.core.dsconfig), and a multi-GPU job's CPUs."""
    t, cl = cfg.training, cfg.cluster
    for msg in deepspeed_problems(t):
        p.add(("training", "deepspeed"), msg)
    if cl.train.gpus > 1:
        p.need(cl.train.cpus >= cl.train.gpus, "cluster.train.cpus",
               f"{cl.train.cpus} is fewer than cluster.train.gpus={cl.train.gpus}: a training job runs one task per "
               f"GPU and each task needs a CPU; raise cpus (it is for the whole job)")


def _check_data(cfg: Config, p: _Problems) -> None:
    """data: the held-out split and the domain and level names runs are named after."""
    d = cfg.data
    p.need(0 <= d.heldout_fraction < 1, "data.heldout_fraction", "must be in [0, 1)")
    p.need(len(d.domains) > 0, "data.domains", "needs at least one domain")
    p.need(len(d.levels) > 0, "data.levels", "needs at least one level (name: file stem)")
    p.need(d.max_examples is None or d.max_examples >= 2, "data.max_examples", "must be >= 2 or null")
    for name in list(d.domains) + list(d.levels):
        p.need(name.replace("-", "").isalnum() and name == name.lower(), f"data.{'domains' if name in d.domains else 'levels'}",
               f"{name!r}: run names are built from these; use lowercase letters, digits and '-'")


def _check_lora(cfg: Config, p: _Problems) -> None:
    """lora: only when training.method is lora."""
    t, lo = cfg.training, cfg.lora
    if t.method == "lora":
        p.need(lo.r >= 1, "lora.r", "must be >= 1")
        p.need(lo.alpha >= 1, "lora.alpha", "must be >= 1")
        p.need(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)")
        p.need(len(lo.target_modules) > 0, "lora.target_modules", "needs at least one module name")


def _check_eval(cfg: Config, p: _Problems) -> None:
    """eval sampling and the judge's basic settings."""
    p.need(cfg.eval.samples_per_question >= 1, "eval.samples_per_question", "must be >= 1")
    p.need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    p.need(cfg.eval.temperature >= 0, "eval.temperature", "must be >= 0")
    p.need(cfg.judge.max_concurrency >= 1, "judge.max_concurrency", "must be >= 1")
    p.need(len(cfg.judge.judges) >= 1, "judge.judges", "needs at least one judge")
    labels = [j.label for j in cfg.judge.judges]
    p.need(len(set(labels)) == len(labels), "judge.judges", f"judge labels must differ (set name:); got {labels}")
    p.need(cfg.judge.max_retries >= 0, "judge.max_retries", "must be >= 0")
    p.need(cfg.eval.questions_per_trait is None or cfg.eval.questions_per_trait >= 1,
           "eval.questions_per_trait", "must be >= 1 or null")
    p.need(cfg.eval.checkpoints_per_task >= 1, "eval.checkpoints_per_task", "must be >= 1")


def _check_eval_vllm(cfg: Config, p: _Problems) -> None:
    """eval.vllm engine settings and the eval task's budget."""
    e, v = cfg.eval, cfg.eval.vllm
    # An empty list would launch tasks that score nothing and a scores.h5 without a trait.
    p.need(len(e.traits) >= 1, "eval.traits", "is empty, so nothing would be scored; list at least one trait, "
           "builtin (evil, hallucination) or a trait file: eval.traits=[evil,hallucination]")
    p.need(0 < v.gpu_memory_utilization <= 1, "eval.vllm.gpu_memory_utilization", "must be in (0, 1]")
    p.need(v.max_model_len is None or v.max_model_len > e.max_new_tokens, "eval.vllm.max_model_len",
           f"{v.max_model_len} leaves no room for the prompt with eval.max_new_tokens={e.max_new_tokens}; "
           f"raise it (or null: the model's own limit)")
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_cpu_loras"):
        value = getattr(v, key)
        p.need(value is None or value >= 1, f"eval.vllm.{key}", "must be >= 1 or null")
    p.need(v.max_loras >= 1, "eval.vllm.max_loras", "must be >= 1")
    p.need(v.checkpoints_per_call >= 1, "eval.vllm.checkpoints_per_call", "must be >= 1")
    p.need(v.max_loras >= v.checkpoints_per_call, "eval.vllm.max_loras",
           f"{v.max_loras} < eval.vllm.checkpoints_per_call={v.checkpoints_per_call}: every checkpoint of a call "
           f"needs its own LoRA slot; raise max_loras or lower checkpoints_per_call")
    p.need(v.max_cpu_loras is None or v.max_cpu_loras >= v.max_loras, "eval.vllm.max_cpu_loras",
           f"must be >= eval.vllm.max_loras={v.max_loras} (vLLM requires it) or null")
    p.need(v.tensor_parallel_size >= 1, "eval.vllm.tensor_parallel_size", "must be >= 1")
    p.need(e.backend != "vllm" or cfg.cluster.eval.gpus == 0 or v.tensor_parallel_size <= cfg.cluster.eval.gpus,
           "eval.vllm.tensor_parallel_size",
           f"{v.tensor_parallel_size} GPUs per engine but cluster.eval.gpus={cfg.cluster.eval.gpus}; raise cluster.eval.gpus")
    p.need(v.cpu_kv_cache_gb > 0, "eval.vllm.cpu_kv_cache_gb", "must be > 0")
    p.need(e.judge_queue >= 1, "eval.judge_queue", "must be >= 1")
    p.need(e.checkpoint_cost_s > 0, "eval.checkpoint_cost_s", "must be > 0 (seconds)")
    p.need(e.task_startup_s >= 0, "eval.task_startup_s", "must be >= 0 (seconds)")
    p.need(0 < e.time_budget <= 1, "eval.time_budget", "must be in (0, 1]")


def _check_judge_servers(cfg: Config, p: _Problems) -> None:
    """judge.servers: self-hosted judge servers and their job resources."""
    j = cfg.judge
    p.need(j.serve_wait_s >= 0, "judge.serve_wait_s", "must be >= 0 (seconds)")
    names = [s.name for s in j.servers]
    for i, s in enumerate(j.servers):
        key = f"judge.servers.{i}"
        p.need(bool(s.name) and s.name.replace("-", "").replace("_", "").isalnum(), f"{key}.name",
               f"{s.name!r}: needs a name of letters, digits, '-' and '_' (judges refer to it as serve:<name>)")
        p.need(bool(s.model) or bool(s.command), f"{key}.model", "needs the model to serve (a hub id or a path)")
        p.need(0 <= s.port <= 65535, f"{key}.port", "must be 0 (pick a free port) or a port number")
        p.need(0 < s.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]")
        p.need(s.tensor_parallel_size >= 1 and (s.gpus == 0 or s.tensor_parallel_size <= s.gpus),
               f"{key}.tensor_parallel_size", f"must be >= 1 and <= its gpus ({s.gpus})")
        p.need(s.startup_timeout_s > 0, f"{key}.startup_timeout_s", "must be > 0")
        for res in ("time_min", "cpus", "mem_gb"):
            p.need(getattr(s, res) >= 1, f"{key}.{res}", "must be >= 1")
        p.need(s.gpus >= 0, f"{key}.gpus", "must be >= 0")
        for res in ("time_min", "gpus", "cpus", "mem_gb"):
            cap = getattr(cfg.cluster.limits, res)
            p.need(cap is None or getattr(s, res) <= cap, f"{key}.{res}",
                   f"{getattr(s, res)} exceeds this cluster's limit cluster.limits.{res}={cap}")
    p.need(len(set(names)) == len(names), "judge.servers", f"server names must differ; got {names}")


def _check_judges(cfg: Config, p: _Problems) -> None:
    """judge.judges: keys, URLs, and serve:<name> judges against their servers."""
    j = cfg.judge
    names = [s.name for s in j.servers]
    p.need(j.timeout_s > 0, "judge.timeout_s", f"must be > 0 seconds (a request's time limit); got {j.timeout_s}")
    for prefix, price in j.prices.items():
        p.need(bool(prefix) and len(price) == 2 and all(v >= 0 for v in price), f"judge.prices.{prefix}",
               f"must be [USD per 1M input tokens, USD per 1M output tokens], two numbers >= 0 under a non-empty "
               f"model-name prefix, e.g. judge.prices={{gpt-4.1-mini: [0.4, 1.6]}}; got {list(price)}")
    p.need(j.batch_poll_s > 0, "judge.batch_poll_s", f"must be > 0 seconds; got {j.batch_poll_s}")
    p.need(j.batch_harvest_min >= 1, "judge.batch_harvest_min",
           f"must be >= 1 minute (the consolidation job's time limit with a batch judge); got {j.batch_harvest_min}")
    for i, spec in enumerate(j.judges):
        url = spec.base_url or ""
        if spec.batch:
            p.need(spec.backend == "openai" and not url.startswith("serve:"), f"judge.judges.{i}.batch",
                   "the Batch API is OpenAI's (or a server implementing /v1/batches): a local or serve: judge "
                   "scores directly; set batch: false")
        if spec.api_key_env is not None:
            p.need(spec.api_key_env.isidentifier() and not spec.api_key_env.startswith(("sk-", "sk_")),
                   f"judge.judges.{i}.api_key_env", "the NAME of an environment variable holding the key "
                   f"(e.g. MY_JUDGE_KEY), never the key itself")
        if url and not url.startswith(("serve:", "http://", "https://")):
            p.need(False, f"judge.judges.{i}.base_url", f"{url!r} has no scheme; write http://{url} (or https://), "
                                                         f"e.g. http://host:8000/v1, or serve:<name>")
        if not url.startswith("serve:"):
            continue
        key = f"judge.judges.{i}.base_url"
        name = url[len("serve:"):]
        server = next((s for s in j.servers if s.name == name), None)
        if server is None:
            p.need(False, key, f"{url}: no judge.servers entry named {name!r} "
                               f"(configured: {', '.join(names) or 'none'}); add one or fix the name")
            continue
        p.need(spec.backend == "openai", f"judge.judges.{i}.backend", f"a serve: judge talks to its server: backend must be openai")
        p.need(not server.model or spec.model == server.model, f"judge.judges.{i}.model",
               f"{spec.model!r}, but server {name!r} serves {server.model!r} under that name; set model: {server.model}")


def _check_cluster(cfg: Config, p: _Problems) -> None:
    """cluster: parallelism, the measured profile, disk, and each job kind's resources."""
    cl = cfg.cluster
    p.need(cl.array_parallelism >= 1, "cluster.array_parallelism", "must be >= 1")
    p.need(cl.local_parallelism >= 1, "cluster.local_parallelism", "must be >= 1")
    p.need(cl.max_requeues >= 0, "cluster.max_requeues", "must be >= 0")
    p.need(cl.gpu_tflops > 0, "cluster.gpu_tflops", "must be > 0")
    for msg in profile_problems(cl.profile):
        p.add(("cluster", "profile"), msg)
    p.need(cl.disk_budget_gb is None or cl.disk_budget_gb > 0, "cluster.disk_budget_gb", "must be > 0 or null")
    for kind in ("train", "eval", "consolidate"):
        res: JobResources = getattr(cl, kind)
        p.need(res.time_min >= 1, f"cluster.{kind}.time_min", "must be >= 1")
        p.need(res.gpus >= 0, f"cluster.{kind}.gpus", "must be >= 0")
        p.need(res.cpus >= 1, f"cluster.{kind}.cpus", "must be >= 1")
        p.need(res.mem_gb >= 1, f"cluster.{kind}.mem_gb", "must be >= 1")
        for key in ("time_min", "gpus", "cpus", "mem_gb"):
            cap = getattr(cl.limits, key)
            p.need(cap is None or getattr(res, key) <= cap, f"cluster.{kind}.{key}",
                   f"{getattr(res, key)} exceeds this cluster's limit cluster.limits.{key}={cap}; "
                   f"lower it or use a partition that allows more")


def _check_activations(cfg: Config, p: _Problems) -> None:
    """activations: capture and persona-vector settings."""
    a = cfg.activations
    p.need(a.train_prompts >= 0, "activations.train_prompts", "must be >= 0")
    p.need(a.batch_size >= 1, "activations.batch_size", "must be >= 1")
    p.need(a.persona_samples >= 1, "activations.persona_samples", "must be >= 1")
    p.need(a.persona_questions is None or a.persona_questions >= 1, "activations.persona_questions", "must be >= 1 or null")
    p.need(a.persona_max_new_tokens >= 1, "activations.persona_max_new_tokens", "must be >= 1")
    p.need(len(set(a.layers)) == len(a.layers), "activations.layers", f"each layer once; got {list(a.layers)}")


def _check_schedules(cfg: Config, p: _Problems) -> None:
    """schedules: the learning-rate schedule study."""
    d = cfg.data
    sc = cfg.schedules
    p.need(sc.domain in d.domains, "schedules.domain", f"must be one of data.domains {list(d.domains)}; got {sc.domain!r}")
    p.need(sc.level in d.levels, "schedules.level", f"must be one of data.levels {list(d.levels)}; got {sc.level!r}")
    sched_ok = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
                "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
    bad = [x for x in sc.lr_schedulers if x not in sched_ok]
    p.need(not bad, "schedules.lr_schedulers", f"unknown scheduler(s) {bad}; valid: {', '.join(sched_ok)}")
    p.need(len(sc.lr_schedulers) >= 1 and len(sc.optimizers) >= 1, "schedules.optimizers",
           "lr_schedulers and optimizers need at least one entry each")
    p.need(all(x > 0 for x in sc.learning_rates), "schedules.learning_rates", "every learning rate must be > 0")


def _check_monitor(cfg: Config, p: _Problems) -> None:
    """monitor: the online onset detector and its actions."""
    mo = cfg.monitor
    p.need(mo.method in ONSET_METHODS, "monitor.method", f"must be one of {', '.join(ONSET_METHODS)}; got {mo.method!r}")
    for trait, action in mo.actions.items():
        p.need(action in ("mark", "stop", "rollback"), f"monitor.actions.{trait}",
               f"must be mark, stop or rollback; got {action!r}")
    p.need(mo.k >= 1 and mo.baseline_points >= 1, "monitor.k", "k and baseline_points must be >= 1")
    p.need(0.001 <= mo.false_alarm_rate < 1, "monitor.false_alarm_rate",
           f"must be in [0.001, 1) (a probability per run); got {mo.false_alarm_rate!r}")
    p.need(mo.horizon > max(mo.baseline_points, 2), "monitor.horizon",
           f"must exceed baseline_points ({mo.baseline_points}); got {mo.horizon!r}")
    p.need(mo.method != "glr" or mo.baseline_points >= 2, "monitor.baseline_points", "glr needs baseline_points >= 2")
    p.need(mo.poll_s > 0, "monitor.poll_s", "must be > 0")
    p.need(mo.max_batch >= 1, "monitor.max_batch", "must be >= 1")
    p.need(mo.webhook_url is None or mo.webhook_url.startswith(("http://", "https://")), "monitor.webhook_url",
           f"must be an http(s) URL or null; got {mo.webhook_url!r}")


def to_dict(obj: Any) -> Any:
    """Plain, JSON-compatible data for a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "source"}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    """The resolved config as YAML (what a run dir records)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def stable_hash(obj: Any, length: int = 8) -> str:
    """A short hex digest of ``obj``'s canonical JSON (config dataclasses allowed)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]
