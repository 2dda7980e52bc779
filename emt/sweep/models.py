"""Where a configured model lives: the trained base model and every judge or base model by name.

The one home of model-path resolution; training, evaluation, the judge server and the launchers
all ask here. The builtin models (``builtin:tiny``, the organism and the builtin judges) live
under the output root and are built by :mod:`emt.builtin` on first use (atomically, under a
build lock, so parallel jobs never build one twice).
"""

from __future__ import annotations

from pathlib import Path

from emt.builtin.organism import build_organism
from emt.builtin.tiny import build_tiny_model
from emt.builtin.tiny_judge import build_organism_judge, build_tiny_judge
from emt.core import paths
from emt.core.config import BUILTIN_ORGANISM, BUILTIN_ORGANISM_JUDGE, BUILTIN_TINY_JUDGE, BUILTIN_TINY_MODEL, Config


def model_path(cfg: Config) -> str:
    """The model to train from: a hub id or local path, or a builtin model's directory (not built here)."""
    if cfg.model.name == BUILTIN_TINY_MODEL:
        return str(paths.builtin_model_dir(cfg.cluster.output_root, cfg.model.tiny_seed, cfg.model.tiny_pretrain_steps))
    if cfg.model.name == BUILTIN_ORGANISM:
        return str(paths.organism_model_dir(cfg.cluster.output_root, cfg.model.tiny_seed, cfg.model.tiny_pretrain_steps))
    return cfg.model.name


def resolve_model(cfg: Config, name: str) -> str:
    """A judge or base model's path by name; the organism and the builtin judges are built on first
    use (atomically). The builtin tiny model is only located: :func:`prepare_builtin_model` builds it."""
    if name == BUILTIN_TINY_MODEL:
        return model_path(cfg)
    if name == BUILTIN_ORGANISM:
        return str(build_organism(Path(model_path(cfg)), seed=cfg.model.tiny_seed,
                                  pretrain_steps=cfg.model.tiny_pretrain_steps))
    if name == BUILTIN_TINY_JUDGE:
        return str(build_tiny_judge(paths.builtin_judge_dir(cfg.cluster.output_root)))
    if name == BUILTIN_ORGANISM_JUDGE:
        return str(build_organism_judge(paths.organism_judge_dir(cfg.cluster.output_root)))
    return name


def prepare_builtin_model(cfg: Config) -> None:
    """Build the builtin base model once, before jobs start (jobs would otherwise race to build it)."""
    if cfg.model.name == BUILTIN_TINY_MODEL:
        build_tiny_model(Path(model_path(cfg)), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)
    elif cfg.model.name == BUILTIN_ORGANISM:
        build_organism(Path(model_path(cfg)), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)


def prepare_builtin_judges(cfg: Config) -> None:
    """Build builtin judge models before jobs start, so parallel tasks do not each build one."""
    for spec in cfg.judge.judges:
        if spec.backend == "local" and spec.model in (BUILTIN_TINY_JUDGE, BUILTIN_ORGANISM_JUDGE):
            resolve_model(cfg, spec.model)
