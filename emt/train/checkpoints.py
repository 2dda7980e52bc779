"""A run's checkpoints and its lock: what makes training safe to kill and restart.

- :func:`run_lock` / :func:`wait_for_rank0`: one job trains a run at a time; the other ranks of
  that job check that the lock is their rank 0's;
- :func:`prepare_resume`: cut-off checkpoints deleted, the newest complete one with resume state
  found; :func:`strip_resume_state` / :func:`delete_checkpoint` keep the run dir within its limits;
- :func:`losses_for_checkpoint`: what a checkpoint's marker records from the Trainer's log;
- :func:`make_trainer_class`: the Trainer with emt's save policy (resume state only on the
  ``resume_state_every`` grid, no tokenizer or model cards in LoRA checkpoints).

Everything here but :func:`make_trainer_class` works without torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from emt.core import paths

log = logging.getLogger(__name__)


LOCK_RETRY_S = 3.0  # rank 0 retries the lock this long: another rank of its job may be probing it
RANK0_WAIT_S = 600.0  # how long other ranks wait for their rank 0 to take the run's lock


@contextlib.contextmanager
def run_lock(run_dir: Path, tag: str = "", retry_s: float = 0.0) -> Iterator[bool]:
    """Hold the run's lock; yields False when another process holds it (retrying ``retry_s``).

    The lock file records ``pid host tag``; the other ranks of a multi-process job read the tag
    to tell their own rank 0 from another job (see :func:`wait_for_rank0`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + retry_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.uname().nodename} {tag}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def wait_for_rank0(run_dir: Path, tag: str, timeout_s: float = RANK0_WAIT_S) -> str:
    """For ranks > 0: wait until this job's rank 0 holds the run's lock.

    Returns "go" (rank 0 of this job holds it), "complete" (the run finished meanwhile) or
    "busy" (another job holds it: rank 0 backs off too). Raises TimeoutError after ``timeout_s``.
    """
    lock = paths.lock_file(run_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if paths.train_complete_file(run_dir).is_file():
            return "complete"
        try:
            fields = lock.read_text().split()
        except OSError:
            fields = []
        if len(fields) >= 3 and fields[2] == tag:
            return "go"
        if fields and lock_held(lock):
            # Held under another tag: another job, unless our rank 0 has it but not yet written
            # its tag (it writes it right after taking the lock): look once more.
            time.sleep(0.5)
            fields = lock.read_text().split() if lock.is_file() else []
            if len(fields) >= 3 and fields[2] == tag:
                return "go"
            if lock_held(lock):
                return "busy"
        time.sleep(0.5)
    raise TimeoutError(f"{run_dir}: rank 0 of this job did not take the run's lock in {timeout_s:.0f} s")


def lock_held(lock: Path) -> bool:
    """True when some process holds ``lock`` (probed with a non-blocking flock, released at once)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint that holds resume state (None: start from scratch)."""
    done = [p for _, p in paths.complete_checkpoints(run_dir) if paths.has_resume_state(p)]
    return done[-1] if done else None


def prepare_resume(run_dir: Path) -> Path | None:
    """Delete checkpoints cut off mid-write; return the newest complete one with resume state."""
    complete = {s for s, _ in paths.complete_checkpoints(run_dir)}
    for step, ckpt in paths.all_checkpoint_dirs(run_dir):
        if step not in complete:
            log.warning("removing incomplete checkpoint %s (cut off mid-write)", ckpt.name)
            shutil.rmtree(ckpt, ignore_errors=True)
    return resumable_checkpoint(run_dir)


def delete_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint: its marker first, so a deletion cut short leaves an incomplete
    checkpoint (cleaned up on the next start), never a complete one with files missing."""
    paths.checkpoint_marker(ckpt).unlink(missing_ok=True)
    shutil.rmtree(ckpt, ignore_errors=True)


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
# The Trainer's save policy (the class is built on demand: importing this module does not import trl)


def make_trainer_class() -> type:
    """SFTTrainer with emt's checkpoint policy: resume state only on the resume_state_every grid,
    and no tokenizer in LoRA checkpoints."""
    from trl import SFTTrainer

    class EmtTrainer(SFTTrainer):
        emt_resume_every: int | None = None
        emt_save_tokenizer: bool = True

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            every = self.emt_resume_every
            # Read by Trainer._save_checkpoint on every save: skip optimizer/scheduler/RNG (and
            # DeepSpeed's save_checkpoint) off the grid. Every rank decides alike (same step).
            self.args.save_only_model = bool(every) and self.state.global_step % every != 0
            super()._save_checkpoint(model, trial)

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            """No model card: trl writes README.md into the run dir at every checkpoint (~10 ms:
            five package versions parsed from their metadata and a jinja template compiled);
            emt records its own provenance (provenance.json) once per run."""

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            processing_class = self.processing_class
            if not self.emt_save_tokenizer:
                self.processing_class = None
            try:
                with lean_adapter_save(self.model):
                    return super()._save(output_dir, state_dict=state_dict)
            finally:
                self.processing_class = processing_class

    return EmtTrainer


@contextlib.contextmanager
def lean_adapter_save(model: Any) -> Iterator[None]:
    """Make a peft model's ``save_pretrained`` write only the adapter, for one save.

    Measured on the tiny model (bench.train_overhead): two fixed costs of every adapter save
    that do not depend on the adapter's size and that nothing reads:

    - the model card (README.md), rendered from a freshly compiled jinja template: ~20 ms;
    - ``save_embedding_layers="auto"``: peft reloads the base model's config.json to check
      whether the vocabulary was resized (~5 ms locally), and for a hub id first asks the hub
      whether that file exists: a network request per checkpoint from a compute node. emt never
      resizes the vocabulary, so the answer is always no.

    Instance attributes shadow the two methods and are removed afterwards.
    """
    if not hasattr(model, "create_or_update_model_card") or not hasattr(model, "peft_config"):
        yield
        return
    model.create_or_update_model_card = lambda *a, **k: None
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_embedding_layers=False)
    try:
        yield
    finally:
        del model.create_or_update_model_card
        del model.save_pretrained
