"""Every on-disk name emt uses, in one place.

Layout under the output root (``cluster.output_root``)::

    <output_root>/
      models/emt-tiny-r<recipe>-s<seed>-p<steps>/  the builtin tiny model (debug config)
      models/emt-tiny-judge-r<recipe>-s<seed>/     the builtin tiny judge (debug config)
      data/debug/<domain>/<stem>.jsonl       the builtin debug datasets
      judge-cache.sqlite                     judge replies keyed by (judge model, prompt)
      runs/<run name>-<config hash>/         one training run
        run.json                             run identity (name, domain, level, seed, hash)
        config.yaml                          the resolved config
        provenance.json                      config hash, git commit + dirty flag, versions
        submission.json                      the newest submission (mode, job id, log folder)
        step-0.json                          held-out loss of the base model
        checkpoint-<step>/                   adapter (or full model) + trainer state
          emt_checkpoint.json                written last: the checkpoint is complete
        train_complete.json                  written when training finished
        eval-<eval hash>/step-<N>.json       one checkpoint's answers and judge scores (N=0: base)
        eval-<eval hash>/logs/<job id>/      submitit logs of the eval array and consolidation
        eval_submission.json                 the newest eval array + consolidation job ids
        scores.h5                            consolidated scores (schema in emt/store.py)
        logs/<job id>/                       submitit logs and pickles of that run's jobs
        .train.lock                          held by the process that trains the run

A checkpoint directory without its ``emt_checkpoint.json`` was cut off mid-write and is never
taken as complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "emt_checkpoint.json"
_CKPT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

# Files of a Trainer checkpoint that exist only to resume training (not needed to evaluate it).
RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
RESUME_STATE_GLOBS = ("rng_state_*.pth", "global_step*")  # multi-process and DeepSpeed variants


def output_root(root: str | Path) -> Path:
    """The absolute output root."""
    return Path(os.path.expandvars(str(root))).expanduser().resolve()


def runs_root(root: str | Path) -> Path:
    return output_root(root) / "runs"


def run_dir(root: str | Path, run_name: str, run_hash: str) -> Path:
    """The directory of one run: readable name plus the short hash of its config."""
    return runs_root(root) / f"{run_name}-{run_hash}"


def builtin_model_dir(root: str | Path, seed: int, pretrain_steps: int) -> Path:
    """The builtin tiny model; its recipe version is in the name, so a new recipe never replaces
    the base model that existing runs were trained on."""
    from emt.tiny import RECIPE_VERSION

    return output_root(root) / "models" / f"emt-tiny-r{RECIPE_VERSION}-s{seed}-p{pretrain_steps}"


def builtin_judge_dir(root: str | Path, seed: int = 0) -> Path:
    """The builtin tiny judge (recipe version in the name, as for the tiny model)."""
    from emt.tiny_judge import RECIPE_VERSION

    return output_root(root) / "models" / f"emt-tiny-judge-r{RECIPE_VERSION}-s{seed}"


def builtin_data_root(root: str | Path) -> Path:
    return output_root(root) / "data" / "debug"


def data_file(data_root: str | Path, domain: str, stem: str) -> Path:
    """A training file in the persona_vectors layout."""
    return Path(data_root) / domain / f"{stem}.jsonl"


def run_info_file(run: Path) -> Path:
    return run / "run.json"


def resolved_config_file(run: Path) -> Path:
    return run / "config.yaml"


def provenance_file(run: Path) -> Path:
    return run / "provenance.json"


def submission_file(run: Path) -> Path:
    return run / "submission.json"


def step0_file(run: Path) -> Path:
    return run / "step-0.json"


def train_complete_file(run: Path) -> Path:
    return run / "train_complete.json"


def job_logs_dir(run: Path) -> Path:
    """The submitit folder of a run's jobs (``%j`` is the job id)."""
    return run / "logs" / "%j"


def lock_file(run: Path) -> Path:
    return run / ".train.lock"


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_marker(ckpt: Path) -> Path:
    return ckpt / CHECKPOINT_MARKER


def checkpoint_step(ckpt: Path) -> int | None:
    """The step of a checkpoint directory name, or None if it is not one."""
    m = _CKPT_RE.match(ckpt.name)
    return int(m.group(1)) if m else None


def all_checkpoint_dirs(run: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` directory of a run, complete or not, sorted by step."""
    if not run.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in run.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def complete_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run (marker present), sorted by step."""
    return [(s, p) for s, p in all_checkpoint_dirs(run) if checkpoint_marker(p).is_file()]


def judge_cache_file(root: str | Path) -> Path:
    return output_root(root) / "judge-cache.sqlite"


def eval_dir(run: Path, eval_hash: str) -> Path:
    """Per-checkpoint results of one evaluation config of a run."""
    return run / f"eval-{eval_hash}"


def result_file(eval_root: Path, step: int) -> Path:
    return eval_root / f"step-{step}.json"


def eval_logs_dir(eval_root: Path) -> Path:
    return eval_root / "logs" / "%j"


def eval_submission_file(run: Path) -> Path:
    return run / "eval_submission.json"


def scores_file(run: Path) -> Path:
    return run / "scores.h5"
