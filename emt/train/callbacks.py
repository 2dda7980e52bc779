"""The Trainer callbacks of a training run, each a plain class of its own:

- :class:`CheckpointRecorder`: marks each checkpoint complete (losses, timings) once every rank
  has written it, and keeps resume state and off-grid checkpoints within their limits;
- :class:`Step0Eval`: the base model's held-out loss, measured when training begins;
- :class:`ProgressLog`: a progress bar in a terminal, periodic log lines in batch logs;
- :class:`StopRequest`: honours the monitor's stop request at a step boundary.

They are written without transformers' ``TrainerCallback`` as base so that importing this module
(and testing their bookkeeping) does not import transformers; :func:`trainer_callback` makes the
instance the Trainer is given, with ``TrainerCallback``'s no-op hooks for every other event.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, TypeVar

from emt.core import atomic, paths
from emt.core.logs import interactive
from emt.train.checkpoints import delete_checkpoint, losses_for_checkpoint, strip_resume_state

log = logging.getLogger(__name__)

T = TypeVar("T")


@functools.cache
def _with_trainer_callback(cls: type) -> type:
    from transformers import TrainerCallback

    # cls first: its hooks win; TrainerCallback answers every other event with None.
    return type(cls.__name__, (cls, TrainerCallback), {"__doc__": cls.__doc__, "__module__": cls.__module__})


def trainer_callback(cls: type[T], *args: Any, **kwargs: Any) -> T:
    """An instance of ``cls`` (one of this module's callbacks) that is also a transformers
    ``TrainerCallback``, for the Trainer's ``callbacks``."""
    return _with_trainer_callback(cls)(*args, **kwargs)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class CheckpointRecorder:
    """Marks each checkpoint complete (with its losses and timings) once every rank has
    written its part; keeps resume state and off-grid checkpoints within their limits.

    Bookkeeping is O(1) per checkpoint (lists kept in memory): a run has hundreds of
    checkpoints, and rescanning them all at every save costs seconds on a shared filesystem.
    """

    def __init__(self, run_dir: Path, keep_resume: int, keep_every: int | None, newest_done: int,
                 main: bool) -> None:
        self.run_dir = run_dir
        self.keep_resume = keep_resume
        self.keep_every = keep_every
        self.newest_done = newest_done  # steps up to here are complete (or pruned): not saved again
        self.main = main
        done = paths.complete_checkpoints(run_dir) if main else []
        self.prev_step = done[-1][0] if done else 0
        self.with_state = [p for _, p in done if paths.has_resume_state(p)]  # oldest first
        self.off_grid = [(s, p) for s, p in done if keep_every and s % keep_every]
        self.t_mark = self.t_step = time.perf_counter()
        self.t_eval: float | None = None
        self.total = {"train_s": 0.0, "eval_s": 0.0, "save_s": 0.0, "bookkeeping_s": 0.0, "checkpoints": 0}
        if main:
            self._trim()

    @staticmethod
    def _now() -> float:
        import torch

        if torch.cuda.is_available():  # kernels run asynchronously: time what has finished
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.t_mark = self._now()
        return control

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if control.should_save and state.global_step <= self.newest_done:
            # Resumed from an older checkpoint with resume state: this step's checkpoint is
            # complete already (or was pruned on purpose); keep it as it is.
            control.should_save = False
            control.should_evaluate = False
        self.t_step = self._now()
        self.t_eval = None
        return control

    def on_evaluate(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.t_eval = self._now()
        return control

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        t_saved = self._now()
        # Every rank has written its files (ZeRO shards, per-rank RNG state) before rank 0
        # declares the checkpoint complete.
        barrier()
        if not self.main:
            self.t_mark = time.perf_counter()
            return control
        step = state.global_step
        ckpt = paths.checkpoint_dir(self.run_dir, step)
        after_step = self.t_eval if self.t_eval is not None else self.t_step
        timing = {"train_s": self.t_step - self.t_mark,
                  "eval_s": (self.t_eval - self.t_step) if self.t_eval is not None else 0.0,
                  "save_s": t_saved - after_step}
        record = {"step": step, "epoch": state.epoch, "time": time.time(),
                  **losses_for_checkpoint(state.log_history, self.prev_step, step),
                  **{k: round(v, 4) for k, v in timing.items()}}
        lrs = [e["learning_rate"] for e in state.log_history if e.get("step") == step and "learning_rate" in e]
        record["learning_rate"] = lrs[-1] if lrs else None
        atomic.write_json(paths.checkpoint_marker(ckpt), record)
        t_book = time.perf_counter()
        self.prev_step = step
        if paths.has_resume_state(ckpt):
            self.with_state.append(ckpt)
        if self.keep_every and step % self.keep_every:
            self.off_grid.append((step, ckpt))
        self._trim()
        now = time.perf_counter()
        for k, v in timing.items():
            self.total[k] += v
        self.total["bookkeeping_s"] += now - t_book
        self.total["checkpoints"] += 1
        self.t_mark = now
        return control

    def _trim(self, final_step: int | None = None) -> None:
        """Strip resume state beyond the newest keep_resume checkpoints that hold it, then
        delete off-grid checkpoints that are neither the newest one nor needed to resume."""
        while len(self.with_state) > self.keep_resume:
            strip_resume_state(self.with_state.pop(0))
        protected = set(self.with_state)
        newest = self.prev_step if final_step is None else final_step
        keep = []
        for s, p in self.off_grid:
            if s < newest and p not in protected:
                delete_checkpoint(p)
            else:
                keep.append((s, p))
        self.off_grid = keep

    def finish(self, final_step: int) -> None:
        """At the end of training: no resume state is needed any more (rank 0)."""
        self.with_state = []
        self._trim(final_step)

    def totals(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.total.items()}


class Step0Eval:
    """The base model's held-out loss (step 0), measured when training begins.

    Inside training, not before it: under DeepSpeed, ``Trainer.evaluate()`` before
    ``train()`` starts an inference-only engine, and training then fails ("'NoneType' object
    has no attribute 'backward'"). Evaluating consumes no random numbers, so the run is the
    same either way. Every rank evaluates its shard; rank 0 writes the file.
    """

    def __init__(self, path: Path, main: bool) -> None:
        self.path = path
        self.main = main
        self.trainer: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        # Every rank sees the same answer: rank 0 writes the file only after the collective
        # evaluation that every rank has entered.
        if self.trainer is None or self.path.is_file():
            return control
        if state.global_step > 0:
            # Resumed weights are no longer the base model (the file is written before the
            # first checkpoint, so only a deleted file gets here).
            log.warning("%s is missing but training resumes at step %d: the base model's held-out "
                        "loss is not measured again", self.path, state.global_step)
            return control
        metrics = self.trainer.evaluate()
        if self.main:
            atomic.write_json(self.path, {"step": 0, "heldout_loss": metrics.get("eval_loss")})
        return control


class ProgressLog:
    """A progress bar in a terminal; a log line every 30 s (or 10%) in batch logs (rank 0)."""

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
            from tqdm.auto import tqdm  # with transformers: imported only when training

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


class StopRequest:
    """Honours the monitor's stop request (``<run>/stop_request.json``) at a step boundary.

    Checked after every optimizer step (one stat of a small file). Every rank must stop at the
    same step or the collectives deadlock, so in a multi-process job rank 0's view is
    broadcast. At the stop the current step is saved as a checkpoint (held-out loss included)
    so the state where training stopped is kept, then the Trainer ends normally.
    """

    def __init__(self, run_dir: Path, has_eval: bool) -> None:
        self.file = paths.stop_request_file(run_dir)
        self.has_eval = has_eval
        self.stopped_at: int | None = None

    def _requested(self) -> bool:
        flag = self.file.is_file()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            t = torch.tensor([1.0 if flag else 0.0])
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, src=0)
            flag = bool(t.item() > 0)
        return flag

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.stopped_at is None and self._requested():
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = self.has_eval
            log.warning("stop requested (%s): training stops at step %d", self.file, state.global_step)
        return control
