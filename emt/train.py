"""Training one run: trl SFTTrainer with a peft LoRA adapter (or full fine-tuning).

What :func:`train_run` guarantees, whatever kills it and however often it is started:

- a checkpoint every ``checkpointing.every_steps`` steps (and at the last step), each recording
  the mean train loss since the previous checkpoint and the held-out in-domain loss;
- a checkpoint counts only once its ``emt_checkpoint.json`` marker is written (after every file
  of it), so one cut off mid-write is deleted and redone, never taken as complete;
- a restart resumes from the newest complete checkpoint (optimizer, scheduler, RNG, data order),
  so an interrupted run ends with the same checkpoint list as an uninterrupted one;
- two processes never train the same run at once (a lock file), and a finished run is not
  trained again;
- optimizer state is kept only on the newest ``keep_resume_state`` checkpoints (disk), and
  removed from all of them when the run completes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from emt import atomic, paths
from emt.config import BUILTIN_TINY_MODEL, Config, to_yaml
from emt.data import DataError, file_sha256, read_chat_jsonl, split_heldout
from emt.logs import interactive, setup_logging
from emt.provenance import collect
from emt.runtime import limit_torch_threads

if TYPE_CHECKING:
    from emt.sweeps import Run

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Small pieces, usable without torch


def model_path(cfg: Config) -> str:
    """The model to load: a hub id or local path, or the builtin tiny model's directory."""
    if cfg.model.name == BUILTIN_TINY_MODEL:
        return str(paths.builtin_model_dir(cfg.cluster.output_root, cfg.model.tiny_seed, cfg.model.tiny_pretrain_steps))
    return cfg.model.name


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold the run's lock; yields False (without waiting) when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.uname().nodename}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def prepare_resume(run_dir: Path) -> Path | None:
    """Delete checkpoints cut off mid-write; return the newest complete one (or None)."""
    complete = {s for s, _ in paths.complete_checkpoints(run_dir)}
    for step, ckpt in paths.all_checkpoint_dirs(run_dir):
        if step not in complete:
            log.warning("removing incomplete checkpoint %s (cut off mid-write)", ckpt.name)
            shutil.rmtree(ckpt, ignore_errors=True)
    done = paths.complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def strip_resume_state(ckpt: Path) -> None:
    """Remove what only resuming needs (optimizer, scheduler, RNG) from a checkpoint."""
    for name in paths.RESUME_STATE_FILES:
        (ckpt / name).unlink(missing_ok=True)
    for pattern in paths.RESUME_STATE_GLOBS:
        for p in ckpt.glob(pattern):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def losses_for_checkpoint(log_history: list[dict[str, Any]], prev_step: int, step: int) -> dict[str, float | None]:
    """Mean train loss over steps (prev_step, step] and the held-out loss at ``step``."""
    train = [e["loss"] for e in log_history if "loss" in e and prev_step < e.get("step", -1) <= step]
    held = [e["eval_loss"] for e in log_history if "eval_loss" in e and e.get("step") == step]
    return {
        "train_loss": float(sum(train) / len(train)) if train else None,
        "heldout_loss": float(held[-1]) if held else None,
    }


# ----------------------------------------------------------------------------------------------
# The job


def train_run(run: "Run") -> dict[str, Any]:
    """Train one run to completion (or resume it); safe to call any number of times."""
    setup_logging()
    rdir = run.path
    done_file = paths.train_complete_file(rdir)
    if done_file.is_file():
        log.info("%s: already complete (%s); nothing to do", run.name, done_file)
        return {"status": "complete", "run": run.name, "skipped": True}
    with run_lock(rdir) as locked:
        if not locked:
            log.warning("%s: another process is training this run (%s); leaving it alone",
                        run.name, paths.lock_file(rdir))
            return {"status": "busy", "run": run.name}
        return _train_locked(run)


def _train_locked(run: "Run") -> dict[str, Any]:
    cfg = run.config
    rdir = run.path
    t0 = time.time()
    atomic.write_json(paths.run_info_file(rdir), run.identity())
    atomic.write_text(paths.resolved_config_file(rdir), to_yaml(cfg))
    atomic.write_json(paths.provenance_file(rdir), collect(run.hash))

    if run.data_sha256 is not None and file_sha256(run.data_file) != run.data_sha256:
        raise DataError([f"{run.data_file}: changed since this run was planned (its hash is part of "
                         f"the run's identity); relaunch to plan a new run"])
    examples = read_chat_jsonl(run.data_file)
    train, held = split_heldout(examples, cfg.data.heldout_fraction, cfg.data.split_seed, cfg.data.max_examples)
    held_eval = held[: cfg.checkpointing.heldout_max_examples] if cfg.checkpointing.heldout_max_examples else held
    resume = prepare_resume(rdir)

    import torch

    limit_torch_threads(cfg.cluster.train.cpus)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    if not interactive():  # batch logs get emt's periodic lines, not carriage-return bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()

    mpath = model_path(cfg)
    if cfg.model.name == BUILTIN_TINY_MODEL:
        from emt.tiny import build_tiny_model

        build_tiny_model(Path(mpath), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)
    on_gpu = torch.cuda.is_available()
    dtype = "auto" if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    if not on_gpu:
        dtype = torch.float32  # bf16 matmuls on CPU are slow and trl's bf16 default fails there
    tok = AutoTokenizer.from_pretrained(mpath, revision=cfg.model.revision)
    model_kwargs: dict[str, Any] = {"dtype": dtype, "revision": cfg.model.revision}
    if cfg.model.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(mpath, **model_kwargs)

    t = cfg.training
    ck = cfg.checkpointing
    has_eval = bool(held_eval)
    args = SFTConfig(
        output_dir=str(rdir),
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=ck.heldout_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps else -1,
        max_length=t.max_length,
        assistant_only_loss=t.assistant_only_loss,
        seed=t.seed,
        optim=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=bool(t.bf16 and on_gpu),
        use_cpu=not on_gpu,
        deepspeed=t.deepspeed,
        save_strategy="steps",
        save_steps=ck.every_steps,
        save_only_model=False,  # resuming needs optimizer + scheduler + RNG state
        eval_strategy="steps" if has_eval else "no",
        eval_steps=ck.every_steps if has_eval else None,
        logging_steps=1,  # per-step losses; a checkpoint's train loss is their mean
        report_to=[],
        disable_tqdm=True,  # emt's own progress callback below
        dataloader_num_workers=0,
    )
    peft_config = None
    if t.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            use_rslora=cfg.lora.use_rslora, target_modules=list(cfg.lora.target_modules),
            bias="none", task_type="CAUSAL_LM",
        )
    cbs = _make_callbacks()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_eval) if has_eval else None,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[cbs["_CheckpointRecorder"](rdir, ck.keep_resume_state), cbs["_ProgressLog"](run.name)],
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)

    step0 = paths.step0_file(rdir)
    if has_eval and not step0.is_file():
        metrics = trainer.evaluate()
        atomic.write_json(step0, {"step": 0, "heldout_loss": metrics.get("eval_loss")})

    if resume is not None:
        log.info("%s: resuming from %s", run.name, resume.name)
    else:
        log.info("%s: %d train / %d held-out examples (%d evaluated per checkpoint)",
                 run.name, len(train), len(held), len(held_eval))
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)

    ckpts = paths.complete_checkpoints(rdir)
    for _, p in ckpts:
        strip_resume_state(p)
    summary = {
        "run": run.name,
        "hash": run.hash,
        "steps": trainer.state.global_step,
        "checkpoints": [s for s, _ in ckpts],
        "train_examples": len(train),
        "heldout_examples": len(held),
        "wall_s_last_attempt": round(time.time() - t0, 2),
    }
    atomic.write_json(paths.train_complete_file(rdir), summary)
    log.info("%s: complete: %d steps, %d checkpoints (%.1f s)", run.name, summary["steps"], len(ckpts), time.time() - t0)
    return {"status": "complete", **summary}


# ----------------------------------------------------------------------------------------------
# Trainer callbacks (classes built lazily so importing emt.train does not import transformers)


def _make_callbacks() -> dict[str, type]:
    from transformers import TrainerCallback

    class _CheckpointRecorder(TrainerCallback):
        """Marks each checkpoint complete (with its losses) once the Trainer has written it."""

        def __init__(self, run_dir: Path, keep_resume: int) -> None:
            self.run_dir = run_dir
            self.keep_resume = keep_resume

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if not state.is_world_process_zero:
                return control
            step = state.global_step
            ckpt = paths.checkpoint_dir(self.run_dir, step)
            done = [s for s, _ in paths.complete_checkpoints(self.run_dir) if s < step]
            prev = done[-1] if done else 0
            record = {"step": step, "epoch": state.epoch, "time": time.time(),
                      **losses_for_checkpoint(state.log_history, prev, step)}
            lrs = [e["learning_rate"] for e in state.log_history if e.get("step") == step and "learning_rate" in e]
            record["learning_rate"] = lrs[-1] if lrs else None
            atomic.write_json(paths.checkpoint_marker(ckpt), record)
            # Older checkpoints no longer need resume state once a newer one is complete.
            complete = paths.complete_checkpoints(self.run_dir)
            for _, old in complete[: -self.keep_resume]:
                strip_resume_state(old)
            return control

    class _ProgressLog(TrainerCallback):
        """A progress bar in a terminal; a log line every 30 s (or 10%) in batch logs."""

        def __init__(self, name: str) -> None:
            self.name = name
            self.bar: Any = None
            self.t0 = time.time()
            self.last = 0.0
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.t0 = time.time()
            self.start_step = state.global_step
            if interactive():
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.name, unit="step")
            return control

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
                return control
            now = time.time()
            tenth = max(1, state.max_steps // 10)
            if now - self.last >= 30 or state.global_step % tenth == 0 or state.global_step == state.max_steps:
                self.last = now
                losses = [e["loss"] for e in state.log_history[-5:] if "loss" in e]
                done = state.global_step - self.start_step
                rate = done / max(now - self.t0, 1e-9)
                eta = (state.max_steps - state.global_step) / rate if rate > 0 else math.inf
                log.info("%s: step %d/%d loss %s, %.2f steps/s, eta %.0f s", self.name, state.global_step,
                         state.max_steps, f"{losses[-1]:.4f}" if losses else "-", rate, eta)
            return control

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.close()
            return control

    return {"_CheckpointRecorder": _CheckpointRecorder, "_ProgressLog": _ProgressLog}
