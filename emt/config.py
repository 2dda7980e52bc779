"""Configuration: small frozen dataclasses filled from YAML plus ``key=value`` overrides.

A config file has the sections ``model, lora, training, checkpointing, data, eval, judge,
cluster``; every key has a default, so a file states only what differs. ``cluster`` is either a
mapping or the path of a cluster profile (relative to the config file), and ``--cluster PATH``
replaces it on the command line. Overrides use dotted keys (``training.learning_rate=2e-5``,
``cluster.train.time_min=600``); their values are parsed as YAML (``lora.target_modules=[q_proj]``).

Errors are collected, not raised one at a time: :func:`load_config` raises one
:class:`ConfigError` listing every problem with its ``file:line`` and, for an unknown key, the
valid keys of that section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

# Sentinel values for the embedded default: the model and the data are built by emt itself.
BUILTIN_TINY_MODEL = "builtin:tiny"
BUILTIN_DEBUG_DATA = "builtin:debug"
BUILTIN_TINY_JUDGE = "builtin:tiny-judge"  # a tiny offline judge model (emt.tiny_judge), for the demo


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
    tiny_seed: int = 0  # builtin:tiny only
    tiny_pretrain_steps: int = 300  # builtin:tiny only


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
    deepspeed: str | None = None  # path of a DeepSpeed JSON config


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
    gpu_memory_utilization: float = 0.85  # vllm backend
    max_model_len: int | None = None  # vllm backend (None: the model's)


@dataclass(frozen=True)
class JudgeSpec:
    """One judge. ``openai``: any OpenAI-compatible server (``base_url``; None = api.openai.com).
    ``local``: the first-token distribution of an in-process model (``model`` is a path, a hub id,
    builtin:tiny or builtin:tiny-judge), through ``local_backend``."""

    backend: Literal["openai", "local"] = "openai"
    model: str = "gpt-4.1-mini-2025-04-14"
    name: str | None = None  # how scores are labelled (default: the model)
    base_url: str | None = None
    local_backend: Literal["hf", "vllm"] = "hf"

    @property
    def label(self) -> str:
        return self.name or self.model


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judges that score answers 0-100; the first is the default."""

    judges: tuple[JudgeSpec, ...] = (JudgeSpec(),)
    max_concurrency: int = 32
    timeout_s: float = 60.0
    max_retries: int = 6
    cache: bool = True  # a persistent SQLite cache under the output root: a rerun costs no call


@dataclass(frozen=True)
class JobResources:
    """Resources of one kind of job."""

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
    disk_budget_gb: float | None = None
    setup: tuple[str, ...] = ()  # shell lines run first in every SLURM job (module load, ...)
    train: JobResources = field(default_factory=lambda: JobResources(time_min=1440, gpus=1, cpus=8, mem_gb=64))
    eval: JobResources = field(default_factory=lambda: JobResources(time_min=240, gpus=1, cpus=8, mem_gb=64))
    consolidate: JobResources = field(default_factory=lambda: JobResources(time_min=60, gpus=0, cpus=2, mem_gb=16))
    limits: Limits = field(default_factory=Limits)


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


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain data, collecting problems


class _Builder:
    def __init__(self) -> None:
        self.problems: list[str] = []

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
                self.problems.append(
                    f"{_loc(where, sub)}unknown key '{name}' in {section}; valid keys: {valid}"
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
    data, lines = _read_yaml(path)
    if data is None:
        data = {}
    where: dict[tuple[str, ...], str] = {k: f"{path}:{n}" for k, n in lines.items()}
    where[()] = str(path)
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])

    cluster_src = cluster if cluster is not None else data.get("cluster")
    if isinstance(cluster_src, (str, Path)):
        cpath = Path(cluster_src)
        if cluster is None and not cpath.is_absolute():
            cpath = path.parent / cpath
        if not cpath.is_file():
            loc = f"{path}:{lines.get(('cluster',), '?')}" if cluster is None else "--cluster"
            problems.append(f"{loc}: cluster profile {cpath} not found")
            data["cluster"] = {}
        else:
            cdata, clines = _read_yaml(cpath)
            data["cluster"] = cdata if cdata is not None else {}
            for k, n in clines.items():
                where[("cluster",) + k] = f"{cpath}:{n}"
            where[("cluster",)] = str(cpath)

    valid_sections = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    for ov in overrides:
        if "=" not in ov:
            problems.append(f"override {ov!r}: expected key=value (for example training.learning_rate=2e-5)")
            continue
        k, _, v = ov.partition("=")
        key = tuple(k.strip().split("."))
        if len(key) < 2 or key[0] not in valid_sections:
            problems.append(
                f"override {ov!r}: keys look like section.key; valid sections: {', '.join(valid_sections)}"
            )
            continue
        try:
            value = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            value = v
        _set_dotted(data, key, value)
        for i in range(1, len(key) + 1):
            where[key[:i]] = f"override {ov!r}"

    builder = _Builder()
    cfg = builder.build(Config, data, (), where)
    problems += builder.problems
    if not problems:
        problems += [f"{_loc(where, k)}{msg}" for k, msg in _validate(cfg)]
    if problems:
        raise ConfigError(problems, header=f"Invalid configuration {path}")
    return dataclasses.replace(cfg, source=str(path))


def _validate(cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """Semantic checks; each problem is (key path, message)."""
    out: list[tuple[tuple[str, ...], str]] = []

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            out.append((tuple(key.split(".")), f"{key}: {msg}"))

    t, c, d, lo, cl = cfg.training, cfg.checkpointing, cfg.data, cfg.lora, cfg.cluster
    need(t.learning_rate > 0, "training.learning_rate", "must be > 0")
    need(t.per_device_batch_size >= 1, "training.per_device_batch_size", "must be >= 1")
    need(t.grad_accum >= 1, "training.grad_accum", "must be >= 1")
    need(t.epochs > 0, "training.epochs", "must be > 0")
    need(t.max_steps is None or t.max_steps >= 1, "training.max_steps", "must be >= 1 or null")
    need(t.max_length >= 16, "training.max_length", "must be >= 16")
    need(t.warmup_steps >= 0, "training.warmup_steps", "must be >= 0")
    need(c.every_steps >= 1, "checkpointing.every_steps", "must be >= 1")
    need(c.keep_resume_state >= 1, "checkpointing.keep_resume_state", "must be >= 1 (resuming needs one)")
    need(c.heldout_max_examples is None or c.heldout_max_examples >= 1,
         "checkpointing.heldout_max_examples", "must be >= 1 or null")
    need(c.heldout_batch_size >= 1, "checkpointing.heldout_batch_size", "must be >= 1")
    need(0 <= d.heldout_fraction < 1, "data.heldout_fraction", "must be in [0, 1)")
    need(len(d.domains) > 0, "data.domains", "needs at least one domain")
    need(len(d.levels) > 0, "data.levels", "needs at least one level (name: file stem)")
    need(d.max_examples is None or d.max_examples >= 2, "data.max_examples", "must be >= 2 or null")
    for name in list(d.domains) + list(d.levels):
        need(name.replace("-", "").isalnum() and name == name.lower(), f"data.{'domains' if name in d.domains else 'levels'}",
             f"{name!r}: run names are built from these; use lowercase letters, digits and '-'")
    if t.method == "lora":
        need(lo.r >= 1, "lora.r", "must be >= 1")
        need(lo.alpha >= 1, "lora.alpha", "must be >= 1")
        need(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)")
        need(len(lo.target_modules) > 0, "lora.target_modules", "needs at least one module name")
    need(cfg.eval.samples_per_question >= 1, "eval.samples_per_question", "must be >= 1")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    need(cfg.eval.temperature >= 0, "eval.temperature", "must be >= 0")
    need(cfg.judge.max_concurrency >= 1, "judge.max_concurrency", "must be >= 1")
    need(len(cfg.judge.judges) >= 1, "judge.judges", "needs at least one judge")
    labels = [j.label for j in cfg.judge.judges]
    need(len(set(labels)) == len(labels), "judge.judges", f"judge labels must differ (set name:); got {labels}")
    need(cfg.judge.max_retries >= 0, "judge.max_retries", "must be >= 0")
    need(cfg.eval.questions_per_trait is None or cfg.eval.questions_per_trait >= 1,
         "eval.questions_per_trait", "must be >= 1 or null")
    need(cfg.eval.checkpoints_per_task >= 1, "eval.checkpoints_per_task", "must be >= 1")
    need(0 < cfg.eval.gpu_memory_utilization <= 1, "eval.gpu_memory_utilization", "must be in (0, 1]")
    need(cl.array_parallelism >= 1, "cluster.array_parallelism", "must be >= 1")
    need(cl.local_parallelism >= 1, "cluster.local_parallelism", "must be >= 1")
    need(cl.max_requeues >= 0, "cluster.max_requeues", "must be >= 0")
    need(cl.gpu_tflops > 0, "cluster.gpu_tflops", "must be > 0")
    for kind in ("train", "eval", "consolidate"):
        res: JobResources = getattr(cl, kind)
        need(res.time_min >= 1, f"cluster.{kind}.time_min", "must be >= 1")
        need(res.gpus >= 0, f"cluster.{kind}.gpus", "must be >= 0")
        need(res.cpus >= 1, f"cluster.{kind}.cpus", "must be >= 1")
        need(res.mem_gb >= 1, f"cluster.{kind}.mem_gb", "must be >= 1")
        for key in ("time_min", "gpus", "cpus", "mem_gb"):
            cap = getattr(cl.limits, key)
            need(cap is None or getattr(res, key) <= cap, f"cluster.{kind}.{key}",
                 f"{getattr(res, key)} exceeds this cluster's limit cluster.limits.{key}={cap}; "
                 f"lower it or use a partition that allows more")
    return out


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
