"""Sweeps, declared in Python: the study's grid of runs.

The grid is ``data.domains x data.levels x seeds``. A run's name is readable (``medical_mild``
for seed 0, ``medical_mild_s1`` for seed 1, however many seeds a launch has) and its directory adds a short hash of
everything that determines its checkpoints (model, LoRA, training, checkpointing, and the data
file's content), so changing a hyperparameter makes a new run instead of mixing checkpoints,
and relaunching an unchanged sweep finds the runs it already has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from emt.core import paths
from emt.core.dsconfig import content_hash
from emt.core.config import BUILTIN_DEBUG_DATA, BUILTIN_ORGANISM, BUILTIN_TINY_MODEL, Config, ConfigError, stable_hash, to_dict
from emt.sweep.data import file_sha256


@dataclass(frozen=True)
class Run:
    """One training run: what a training job receives (it is pickled into the job)."""

    name: str
    domain: str
    level: str
    seed: int
    config: Config  # training.seed is this run's seed
    data_file: str
    data_sha256: str | None  # None when the file is not on this machine (dry-run only)
    hash: str
    run_dir: str
    variant: str = ""  # a schedule-sweep run's variant (``cosine-lr1e-05-adamw-torch``), else ""

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    def identity(self) -> dict[str, object]:
        """What run.json records."""
        return {
            "name": self.name, "domain": self.domain, "level": self.level, "seed": self.seed,
            "hash": self.hash, "data_file": self.data_file, "data_sha256": self.data_sha256,
        }

    def labels(self) -> dict[str, object]:
        """What the run is, as scores.h5 attributes: run name, domain, level, variant ("" for none), seed."""
        return {"run": self.name, "domain": self.domain, "level": self.level, "variant": self.variant, "seed": self.seed}


def data_root(cfg: Config) -> Path:
    """Where the training files are: the builtin debug data or ``data.root`` (absolute)."""
    if cfg.data.root == BUILTIN_DEBUG_DATA:
        return paths.builtin_data_root(cfg.cluster.output_root)
    if cfg.data.root == BUILTIN_ORGANISM:
        return paths.organism_data_root(cfg.cluster.output_root)
    return Path(cfg.data.root).expanduser().resolve()


def run_hash(cfg: Config, domain: str, level: str, data_sha: str | None) -> str:
    """Short hash of everything that determines a run's checkpoints (not paths or resources)."""
    ck = to_dict(dataclasses.replace(cfg.checkpointing, keep_resume_state=1, heldout_batch_size=1))
    # Where resume state is kept and which checkpoints are kept on disk change no checkpoint's
    # weights: not part of a run's identity (and absent from the hashes of runs made before).
    ck.pop("resume_state_every", None)
    ck.pop("keep_every", None)
    training = to_dict(cfg.training)
    training.pop("report_to", None)  # where metrics are logged changes no weight (and older runs lack it)
    if not cfg.training.sft_args:
        # Extra SFTConfig fields change the weights when given; none given is the runs made
        # before the key existed, whose hashes must stay what they were.
        training.pop("sft_args", None)
    if cfg.training.deepspeed is not None:
        # The file's content, not its name or path: an edited config is a new run.
        training["deepspeed"] = {"sha256": content_hash(cfg.training.deepspeed)}
    d = cfg.data
    model = to_dict(cfg.model)
    if cfg.model.name == BUILTIN_TINY_MODEL:
        model["tiny_recipe"] = paths.TINY_RECIPE_VERSION  # a new recipe is a new base model: new runs
    elif cfg.model.name == BUILTIN_ORGANISM:
        model["organism_recipe"] = paths.ORGANISM_RECIPE_VERSION
    key = {
        "model": model,
        "lora": to_dict(cfg.lora) if cfg.training.method == "lora" else None,
        "training": training,
        "checkpointing": ck,
        "data": {
            "domain": domain, "level": level, "stem": d.levels[level], "sha256": data_sha,
            "heldout_fraction": d.heldout_fraction, "split_seed": d.split_seed, "max_examples": d.max_examples,
        },
    }
    world = train_world_size(cfg)
    if world > 1:  # the global batch is per_device_batch_size x grad_accum x world size
        key["world_size"] = world
    return stable_hash(key)


def train_world_size(cfg: Config) -> int:
    """Processes that train one run: one per GPU of cluster.train (at least one)."""
    return max(1, cfg.cluster.train.gpus)


DEFAULT_SEED = 0  # TrainingConfig.seed's default (and paper.yaml's): the runs named before seeds existed


def seed_suffix(seed: int) -> str:
    """``_s<seed>`` for every seed but :data:`DEFAULT_SEED`, which keeps the bare name.

    A run's name (and so its directory) depends only on its own seed, never on how many seeds
    one launch asked for: ``--seeds 0,1`` after a run with seed 0 finds that run instead of
    training it again under ``_s0``, and ``--seeds 7`` alone is ``_s7``, not the bare name.
    """
    return "" if seed == DEFAULT_SEED else f"_s{seed}"


def _adopt_legacy(root: str, base: str, seed: int, h: str, name: str, rdir: Path) -> tuple[str, Path]:
    """(name, directory) of a run made before :func:`seed_suffix`, when one exists with this hash.

    Names used to depend on the launch: ``_s<seed>`` for every seed of a multi-seed launch
    (``medical_mild_s0``), no suffix for a single seed (``medical_mild`` for seed 7). The hash
    holds the seed, so a directory of the same hash under the old name is this very run: it is
    used as it is (its checkpoints and scores stay valid) rather than trained again.
    """
    old = f"{base}_s{seed}" if seed == DEFAULT_SEED else base
    legacy = paths.run_dir(root, old, h)
    return (old, legacy) if legacy.is_dir() else (name, rdir)


def selectable(cfg: Config) -> list[str]:
    """Every valid ``--sweep`` value for a config."""
    names = [f"{dom}_{lvl}" for dom in cfg.data.domains for lvl in cfg.data.levels]
    return ["all", *cfg.data.domains, *cfg.data.levels, *names, "schedules"]


LION = "lion_32bit"  # transformers' name for Lion (bitsandbytes)


def schedule_optimizers(cfg: Config) -> tuple[list[str], list[str]]:
    """(optimizers the schedule sweep uses, notes): ``lion`` becomes ``lion_32bit`` where
    bitsandbytes is installed and is dropped (with a note) where it is not."""
    import importlib.util

    out, notes = [], []
    for o in cfg.schedules.optimizers:
        if o in ("lion", LION):
            if importlib.util.find_spec("bitsandbytes") is None:
                notes.append("schedules: Lion skipped (needs bitsandbytes: pip install bitsandbytes)")
                continue
            o = LION
        if o not in out:
            out.append(o)
    return out, notes


def schedule_variants(cfg: Config) -> list[tuple[str, dict[str, object]]]:
    """(variant name, training overrides) for every scheduler x learning rate x optimizer.

    Names are readable and contain no underscore (run names are ``<domain>_<level>_<variant>``):
    ``cosine-lr1e-05-adamw-torch``. The configured schedule itself has the empty name: it is the
    plain ``<domain>_<level>`` run, shared with the main sweep.
    """
    sc = cfg.schedules
    lrs = list(sc.learning_rates) or [cfg.training.learning_rate]
    opts, _ = schedule_optimizers(cfg)
    out = []
    for sched in sc.lr_schedulers:
        for lr in lrs:
            for opt in opts:
                over = {"lr_scheduler": sched, "learning_rate": float(lr), "optimizer": opt}
                t = cfg.training
                if (t.lr_scheduler, t.learning_rate, t.optimizer) == (sched, float(lr), opt):
                    out.append(("", over))  # the configured schedule itself: the plain run, not trained twice
                    continue
                out.append((f"{sched}-lr{lr:g}-{opt}".replace("_", "-"), over))
    return out


def build_sweep(
    cfg: Config,
    sweep: str = "all",
    runs: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Run]:
    """The runs selected by ``--sweep`` (all | a domain | a level | a run name) and ``--runs``.

    Raises :class:`ConfigError` naming the valid choices when a selector matches nothing.
    """
    seeds = list(seeds) if seeds else [cfg.training.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError([f"--seeds {seeds}: each seed once"])
    valid = selectable(cfg)
    problems = []
    if sweep not in valid:
        problems.append(f"--sweep {sweep!r} matches nothing; valid: {', '.join(valid)}")
    grid = [(dom, lvl) for dom in cfg.data.domains for lvl in cfg.data.levels]
    chosen = [(dom, lvl) for dom, lvl in grid if sweep in ("all", dom, lvl, f"{dom}_{lvl}")]
    variants: list[tuple[str, dict[str, object]]] = [("", {})]
    if sweep == "schedules":
        chosen = [(cfg.schedules.domain, cfg.schedules.level)]
        variants = schedule_variants(cfg)
    if runs:
        names = {f"{dom}_{lvl}" for dom, lvl in grid}
        unknown = [r for r in runs if r not in names]
        if unknown:
            problems.append(f"--runs {','.join(unknown)}: unknown run name; valid: {', '.join(sorted(names))}")
        chosen = [(dom, lvl) for dom, lvl in chosen if f"{dom}_{lvl}" in runs]
    if problems:
        raise ConfigError(problems, header="Invalid run selection")

    root = data_root(cfg)
    out: list[Run] = []
    sha_cache: dict[Path, str | None] = {}
    for dom, lvl in chosen:
        f = paths.data_file(root, dom, cfg.data.levels[lvl])
        if f not in sha_cache:
            sha_cache[f] = file_sha256(f) if f.is_file() else None
        for variant, over in variants:
            for seed in seeds:
                rcfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, seed=seed, **over))
                base = f"{dom}_{lvl}" + (f"_{variant}" if variant else "")
                name = base + seed_suffix(seed)
                h = run_hash(rcfg, dom, lvl, sha_cache[f])
                rdir = paths.run_dir(cfg.cluster.output_root, name, h)
                if not rdir.exists():
                    name, rdir = _adopt_legacy(cfg.cluster.output_root, base, seed, h, name, rdir)
                out.append(Run(name, dom, lvl, seed, rcfg, str(f), sha_cache[f], h, str(rdir), variant))
    return out


def run_state(run: Run) -> tuple[str, int]:
    """("complete" | "partial" | "missing", number of complete checkpoints) from the run dir."""
    rdir = run.path
    n = len(paths.complete_checkpoints(rdir))
    if paths.train_complete_file(rdir).is_file():
        return "complete", n
    return ("partial" if n else "missing"), n
