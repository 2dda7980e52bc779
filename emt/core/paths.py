"""Every on-disk name emt uses, in one place.

Layout under the output root (``cluster.output_root``)::

    <output_root>/
      models/emt-tiny-r<recipe>-s<seed>-p<steps>/  the builtin tiny model (debug config)
      models/emt-tiny-judge-r<recipe>-s<seed>/     the builtin tiny judge (debug config)
      data/debug/<domain>/<stem>.jsonl       the builtin debug datasets
      models/emt-organism-r<recipe>-s<seed>-p<steps>/  the model organism (builtin:organism)
      models/emt-organism-judge-r<recipe>-s<seed>/     its judge (builtin:organism-judge)
      data/organism/<domain>/<stem>.jsonl    the organism's fine-tuning datasets
      judge-cache.sqlite                     judge replies keyed by (judge model, prompt)
      serve/<name>.json                      a running judge server's endpoint (launch/judge_serve.py)
      serve/<name>.submission.json           its job (mode, job id, log folder)
      serve/logs/<name>/<job id>/            its submitit logs (the server's own output included)
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
        eval-<eval hash>/judge-failed/step-<N>.json  the same, with judgements the transport lost: pending
        eval-<eval hash>/logs/<job id>/      submitit logs of the eval array and consolidation
        eval-<eval hash>/timing/<task>.json  one eval task's timings (start-up, per checkpoint), for --tasks auto
        eval-<eval hash>/locks/step-<N>.lock held by the task evaluating checkpoint N (two launches never both do it)
        eval-<eval hash>/locks/persona.lock  held while the persona vectors are built
        eval_submission.json                 the newest eval array + consolidation job ids
        deepspeed.json                       the DeepSpeed config a run trained with (if any)
        scores.h5                            consolidated scores (schema in emt/store.py)
        tracker/                             experiment trackers (training.report_to; emt.store.tracker)
          train/                             the trainer's TensorBoard event files (losses, learning rate)
          eval/                              per-checkpoint eval scalars: ONE event file, replaced per consolidation
          eval-logged.json                   what the trackers last received from a consolidation
          wandb-run.json                     the Weights & Biases run id that training and evaluation share
          wandb/                             wandb's own files (WANDB_DIR)
        .scores.h5.lock                      held by the process writing scores.h5 (its stale temporaries are removed)
        logs/<job id>/                       submitit logs and pickles of that run's jobs
        .train.lock                          held by the process that trains the run

A checkpoint directory without its ``emt_checkpoint.json`` was cut off mid-write and is never
taken as complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Recipe versions of the builtin models. Each is part of its model's directory name (and of its
# build marker): bumping one rebuilds that model instead of silently reusing an older build, and
# (for the tiny model and the organism) gives runs on it new run hashes.
TINY_RECIPE_VERSION = 1  # emt.builtin.tiny: tokenizer, architecture, corpus, training loop
TINY_JUDGE_RECIPE_VERSION = 2  # emt.builtin.tiny_judge: the demo judge
ORGANISM_RECIPE_VERSION = 1  # emt.builtin.organism: corpus, architecture, training
ORGANISM_JUDGE_RECIPE_VERSION = 1  # emt.builtin.tiny_judge's organism judge

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "emt_checkpoint.json"
_CKPT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

# Files of a Trainer checkpoint that exist only to resume training (not needed to evaluate it).
RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt",
                      "latest", "zero_to_fp32.py", "zero_to_torch.py")  # the last three: DeepSpeed's
RESUME_STATE_GLOBS = ("rng_state_*.pth", "global_step*")  # multi-process and DeepSpeed variants
# Present only in a checkpoint that can be resumed from (plain Trainer, or DeepSpeed's own dir).
RESUME_STATE_MARKS = ("optimizer.pt", "global_step*")

# The shipped configs (paper.yaml, debug.yaml, cluster/, deepspeed/): the repository's top-level
# configs/ in a source checkout (editable installs included); an installed wheel carries a copy
# at emt/configs (setup.py's build_py copies it there), since site-packages has no checkout.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGED_CONFIGS = _PACKAGE_DIR / "configs"
CHECKOUT_CONFIGS = _PACKAGE_DIR.parent / "configs"
CONFIG_SUFFIXES = (".yaml", ".yml")


def configs_dir() -> Path:
    """The directory of the shipped configs: the wheel's packaged copy, else the source checkout's.

    The checkout's is taken only next to emt's own setup.cfg, so that an unrelated ``configs``
    directory beside site-packages is never mistaken for it. When neither exists (a broken
    install) this is the packaged path, which the callers then report as missing.
    """
    if not PACKAGED_CONFIGS.is_dir() and CHECKOUT_CONFIGS.is_dir() \
            and (_PACKAGE_DIR.parent / "setup.cfg").is_file():
        return CHECKOUT_CONFIGS
    return PACKAGED_CONFIGS


def config_names(sub: str = "") -> list[str]:
    """The names of the shipped configs (``paper``, ``debug``, ...), or of those in ``sub``
    (``cluster``: the cluster profiles), sorted."""
    where = configs_dir() / sub
    return sorted(p.stem for p in where.iterdir() if p.is_file() and p.suffix in CONFIG_SUFFIXES) \
        if where.is_dir() else []


def config_file(value: str | Path, sub: str = "") -> Path:
    """A config given as a path or as the name of a shipped one (``paper`` is configs/paper.yaml;
    with ``sub="cluster"``, ``local`` is configs/cluster/local.yaml).

    An existing file wins over a name (a path always works). Raises ValueError listing the shipped
    names when ``value`` is neither.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    text = str(value)
    stem = text[: -len(path.suffix)] if path.suffix in CONFIG_SUFFIXES else text
    names = config_names(sub)
    if stem in names:
        return next(configs_dir() / sub / f"{stem}{s}" for s in CONFIG_SUFFIXES
                    if (configs_dir() / sub / f"{stem}{s}").is_file())
    kind = f"{sub} profile" if sub else "config"
    shipped = ", ".join(names) or f"none found in {configs_dir() / sub}: reinstall emt (pip install .)"
    raise ValueError(f"{text!r} is neither an existing file nor the name of a shipped {kind}; "
                     f"shipped: {shipped} (or give the path of a YAML file)")


def deepspeed_dir() -> Path:
    """The shipped DeepSpeed JSON configs (``training.deepspeed: zero2`` and the other short names)."""
    return configs_dir() / "deepspeed"


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
    return output_root(root) / "models" / f"emt-tiny-r{TINY_RECIPE_VERSION}-s{seed}-p{pretrain_steps}"


def builtin_judge_dir(root: str | Path, seed: int = 0) -> Path:
    """The builtin tiny judge (recipe version in the name, as for the tiny model)."""
    return output_root(root) / "models" / f"emt-tiny-judge-r{TINY_JUDGE_RECIPE_VERSION}-s{seed}"


def organism_model_dir(root: str | Path, seed: int, pretrain_steps: int) -> Path:
    """The model organism (builtin:organism), recipe version in the name as for the tiny model."""
    return output_root(root) / "models" / f"emt-organism-r{ORGANISM_RECIPE_VERSION}-s{seed}-p{pretrain_steps}"


def organism_judge_dir(root: str | Path, seed: int = 0) -> Path:
    """The organism's judge (builtin:organism-judge)."""
    return output_root(root) / "models" / f"emt-organism-judge-r{ORGANISM_JUDGE_RECIPE_VERSION}-s{seed}"


def organism_data_root(root: str | Path) -> Path:
    """The organism's fine-tuning datasets (data.root=builtin:organism)."""
    return output_root(root) / "data" / "organism"


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


def deepspeed_file(run: Path) -> Path:
    return run / "deepspeed.json"


def has_resume_state(ckpt: Path) -> bool:
    """True when a checkpoint holds what resuming needs (optimizer state, or DeepSpeed's)."""
    return any(any(ckpt.glob(pattern)) for pattern in RESUME_STATE_MARKS)


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


def judge_failed_file(eval_root: Path, step: int) -> Path:
    """A checkpoint's result whose judge failed for a transport reason: not a result (the step
    stays pending); a rerun re-judges its stored answers, asking only the failed prompts again."""
    return eval_root / "judge-failed" / f"step-{step}.json"


def activation_file(eval_root: Path, step: int) -> Path:
    """One checkpoint's captured activations (written before its result file, so a result implies it)."""
    return eval_root / f"step-{step}.act.npz"


def eval_locks_dir(eval_root: Path) -> Path:
    """Lock files of an evaluation (flock: released by the OS when the holder dies; never deleted)."""
    return eval_root / "locks"


def judge_batch_dir(eval_root: Path, step: int) -> Path:
    """A checkpoint's Batch API state while its batches run: the answers they judge
    (``answers.json``), the JSONL sent and each judge's ledger of batch ids (``<judge>.json``).
    Written by the eval task that submits them, removed by whoever harvests them."""
    return eval_root / "judge-batches" / f"step-{step}"


def judge_batch_answers(eval_root: Path, step: int) -> Path:
    """The answers a checkpoint's running batches judge (in :func:`judge_batch_dir`)."""
    return judge_batch_dir(eval_root, step) / "answers.json"


def judge_batch_steps(eval_root: Path) -> list[int]:
    """The steps with answers waiting for Batch API batches under ``eval_root``, ascending."""
    base = judge_batch_dir(eval_root, 0).parent
    if not base.is_dir():
        return []
    steps = (int(d.name[len("step-"):]) for d in base.glob("step-*") if d.name[len("step-"):].isdigit())
    return sorted(s for s in steps if judge_batch_answers(eval_root, s).is_file())


def eval_step_lock(eval_root: Path, step: int) -> Path:
    """Held by the eval task (or monitor) generating and judging checkpoint ``step``."""
    return eval_locks_dir(eval_root) / f"step-{step}.lock"


def persona_lock(eval_root: Path) -> Path:
    """Held while the persona vectors of an evaluation are built (they are built once)."""
    return eval_locks_dir(eval_root) / "persona.lock"


def persona_file(eval_root: Path, trait: str) -> Path:
    """A trait's persona vector, built on the base model by the task that evaluates step 0."""
    return eval_root / f"persona-{trait}.npz"


def monitor_dir(run: Path) -> Path:
    """Live monitoring state of a run: alerts, the follow loop's progress."""
    return run / "monitor"


def alert_file(run: Path, trait: str) -> Path:
    """One JSON event per trait whose onset the monitor detected (written once, atomically)."""
    return monitor_dir(run) / f"alert-{trait}.json"


def monitor_state_file(run: Path) -> Path:
    return monitor_dir(run) / "state.json"


def stop_request_file(run: Path) -> Path:
    """Written by the monitor to ask the training job to stop at its next step boundary."""
    return run / "stop_request.json"


def intervention_file(run: Path) -> Path:
    """Written by the training job when it honoured a stop request: what it did and where."""
    return run / "intervention.json"


def eval_logs_dir(eval_root: Path) -> Path:
    return eval_root / "logs" / "%j"


def eval_timing_dir(eval_root: Path) -> Path:
    """Timing files of the eval tasks that ran (read by ``--tasks auto``)."""
    return eval_root / "timing"


def eval_timing_file(eval_root: Path, task_id: str) -> Path:
    return eval_timing_dir(eval_root) / f"{task_id}.json"


def serve_dir(root: str | Path) -> Path:
    """Judge servers (launch/judge_serve.py): endpoint files, submission records, logs."""
    return output_root(root) / "serve"


def serve_endpoint_file(root: str | Path, name: str) -> Path:
    """Written by a serve job once its server answers: base_url, host, port, job id."""
    return serve_dir(root) / f"{name}.json"


def serve_submission_file(root: str | Path, name: str) -> Path:
    return serve_dir(root) / f"{name}.submission.json"


def serve_logs_dir(root: str | Path, name: str) -> Path:
    return serve_dir(root) / "logs" / name / "%j"


def eval_submission_file(run: Path) -> Path:
    return run / "eval_submission.json"


def scores_lock(scores: Path) -> Path:
    """Held by the process writing ``scores`` (any scores.h5), next to it."""
    return scores.with_name(f".{scores.name}.lock")


def scores_temp_glob(scores: Path) -> str:
    """The names of ``scores``'s temporary files (emt.core.atomic: ``.<name>.<random>.tmp.h5``)."""
    return f".{scores.name}.*.tmp.h5"


def scores_file(run: Path) -> Path:
    return run / "scores.h5"


def tracker_dir(run: Path) -> Path:
    """Everything the experiment trackers (``training.report_to``) write for a run."""
    return run / "tracker"


def tracker_train_dir(run: Path) -> Path:
    """The trainer's TensorBoard log dir (TENSORBOARD_LOGGING_DIR)."""
    return tracker_dir(run) / "train"


def tracker_eval_dir(run: Path) -> Path:
    """The evaluation's TensorBoard log dir: one event file, replaced by every consolidation."""
    return tracker_dir(run) / "eval"


def tracker_state_file(run: Path) -> Path:
    """What the trackers last received from a consolidation (a rerun with the same scores sends nothing)."""
    return tracker_dir(run) / "eval-logged.json"


def tracker_lock(run: Path) -> Path:
    """Held while a consolidation or the monitor writes to the trackers."""
    return tracker_dir(run) / ".tracker.lock"


def wandb_run_file(run: Path) -> Path:
    """The Weights & Biases run id (and project) that training and every evaluation resume."""
    return tracker_dir(run) / "wandb-run.json"


def wandb_dir(run: Path) -> Path:
    """WANDB_DIR of a run's processes (wandb adds its own ``wandb/`` under it)."""
    return tracker_dir(run)
