"""Training one run: trl SFTTrainer with a peft LoRA adapter or full fine-tuning, optionally
through DeepSpeed (ZeRO-2/3) and on several GPUs (one process per GPU).

What :func:`train_run` guarantees, whatever kills it and however often it is started:

- a checkpoint every ``checkpointing.every_steps`` steps (and at the last step), each recording
  the mean train loss since the previous checkpoint, the held-out in-domain loss, and how long
  training, held-out evaluation and saving took since the previous one;
- a checkpoint counts only once its ``emt_checkpoint.json`` marker is written (after every file
  of it, by every process), so one cut off mid-write is deleted and redone, never taken as
  complete;
- a restart resumes from the newest complete checkpoint that holds resume state (optimizer,
  scheduler, RNG, data order; DeepSpeed's ``global_step*`` directory under DeepSpeed), so an
  interrupted run ends with the same checkpoints as an uninterrupted one; complete checkpoints
  newer than that one are kept, not redone;
- two jobs never train the same run at once (a lock file held by rank 0; the other ranks of the
  same job check that it is their job's), and a finished run is not trained again;
- optimizer state is written at checkpoints on the ``resume_state_every`` grid (all by
  default), kept only on the newest ``keep_resume_state`` of them, and removed from all when the
  run completes; with ``keep_every``, checkpoints off that grid are deleted once a newer one is
  complete.

Several processes (``cluster.train.gpus`` > 1): every rank runs this same function; only rank 0
writes run files and markers, and every rank takes part in each save (ZeRO-3 gathers the
weights from all of them) before a barrier and the marker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from emt import atomic, distributed, paths
from emt.config import BUILTIN_ORGANISM, BUILTIN_TINY_MODEL, Config, to_yaml
from emt.data import DataError, file_sha256, read_chat_jsonl, split_heldout
from emt.logs import interactive, setup_logging
from emt.provenance import collect
from emt.runtime import cpu_threads

if TYPE_CHECKING:
    from emt.sweeps import Run

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Small pieces, usable without torch


def model_path(cfg: Config) -> str:
    """The model to load: a hub id or local path, or the builtin tiny model's directory."""
    if cfg.model.name == BUILTIN_TINY_MODEL:
        return str(paths.builtin_model_dir(cfg.cluster.output_root, cfg.model.tiny_seed, cfg.model.tiny_pretrain_steps))
    if cfg.model.name == BUILTIN_ORGANISM:
        return str(paths.organism_model_dir(cfg.cluster.output_root, cfg.model.tiny_seed, cfg.model.tiny_pretrain_steps))
    return cfg.model.name


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
        if fields and _lock_held(lock):
            # Held under another tag: another job, unless our rank 0 has it but not yet written
            # its tag (it writes it right after taking the lock): look once more.
            time.sleep(0.5)
            fields = lock.read_text().split() if lock.is_file() else []
            if len(fields) >= 3 and fields[2] == tag:
                return "go"
            if _lock_held(lock):
                return "busy"
        time.sleep(0.5)
    raise TimeoutError(f"{run_dir}: rank 0 of this job did not take the run's lock in {timeout_s:.0f} s")


def _lock_held(lock: Path) -> bool:
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
# The job


def train_run(run: "Run") -> dict[str, Any]:
    """Train one run to completion (or resume it); safe to call any number of times, and by
    every rank of a multi-process job (see the module docstring)."""
    setup_logging()
    from emt.sweeps import train_world_size

    env = distributed.from_environ()
    if env is None:
        # One process. DeepSpeed needs the variables even then (else it looks for MPI); plain
        # training goes without, so torch.distributed is not started for nothing.
        env = distributed.ensure() if run.config.training.deepspeed else distributed.single()
    planned = train_world_size(run.config)
    if env.world_size != planned:
        raise RuntimeError(
            f"{run.name}: this job runs {env.world_size} process(es) but cluster.train.gpus="
            f"{run.config.cluster.train.gpus} plans {planned} (the global batch, and so the run, depends on it); "
            f"submit with launch/train.py (SLURM or --local; --debug runs one process) or set cluster.train.gpus")
    rdir = run.path
    done_file = paths.train_complete_file(rdir)
    if done_file.is_file():
        log.info("%s: already complete (%s); nothing to do", run.name, done_file)
        return {"status": "complete", "run": run.name, "skipped": True}
    if not env.is_main:
        state = wait_for_rank0(rdir, env.job_tag)
        if state != "go":
            return {"status": state, "run": run.name, "skipped": True}
        return _train_locked(run, env)
    with run_lock(rdir, env.job_tag, retry_s=LOCK_RETRY_S if env.world_size > 1 else 0.0) as locked:
        if not locked:
            log.warning("%s: another process is training this run (%s); leaving it alone",
                        run.name, paths.lock_file(rdir))
            return {"status": "busy", "run": run.name}
        return _train_locked(run, env)


def record_intervention(run_dir: Path, stopped_at: int) -> dict[str, Any]:
    """Write ``intervention.json``: the stop request (trait, onset, action, rollback step) and the
    step where training actually stopped. Returns what it wrote."""
    try:
        req = json.loads(paths.stop_request_file(run_dir).read_text())
    except (OSError, ValueError):
        req = {}
    rec = {"action": req.get("action", "stop"), "trait": req.get("trait"), "onset_step": req.get("onset_step"),
           "detected_step": req.get("detected_step"), "rollback_step": req.get("rollback_step"),
           "requested": req.get("time"), "stopped_at_step": int(stopped_at),
           "stopped": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic.write_json(paths.intervention_file(run_dir), rec)
    return rec


def _deepspeed_setup(cfg: Config, run_dir: Path, main: bool) -> dict[str, Any] | None:
    """The run's DeepSpeed config (recorded in the run dir by rank 0), or None without DeepSpeed."""
    if cfg.training.deepspeed is None:
        return None
    from emt.dsconfig import load

    ds = load(cfg.training.deepspeed)
    if main:
        atomic.write_json(paths.deepspeed_file(run_dir), ds)
    prefix = Path(sys.prefix) / "torch_extensions"
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        # Ops DeepSpeed compiles on first use (cpu_adam for zero3_offload: ~60 s) are cached in
        # the venv they were built against, not in a ~/.cache shared by other torch versions.
        os.environ["TORCH_EXTENSIONS_DIR"] = str(prefix)
    import torch

    if not torch.cuda.is_available():
        # On CPU, DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce op at start
        # (~85 s on 2 cores) that only speeds up CPU collectives; gloo does them without it.
        # Marking it incompatible skips the build (guarded: a DeepSpeed without this table
        # merely compiles it).
        try:
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        except Exception as exc:  # noqa: BLE001 - an optimisation only
            log.debug("could not skip DeepSpeed's shm op build: %s", exc)
    return ds


def _train_locked(run: "Run", env: distributed.DistEnv) -> dict[str, Any]:
    cfg = run.config
    rdir = run.path
    main = env.is_main
    t0 = time.time()
    if main:
        atomic.write_json(paths.run_info_file(rdir), run.identity())
        atomic.write_text(paths.resolved_config_file(rdir), to_yaml(cfg))
        atomic.write_json(paths.provenance_file(rdir), collect(run.hash))

    if run.data_sha256 is not None and file_sha256(run.data_file) != run.data_sha256:
        raise DataError([f"{run.data_file}: changed since this run was planned (its hash is part of "
                         f"the run's identity); relaunch to plan a new run"])
    examples = read_chat_jsonl(run.data_file)
    train, held = split_heldout(examples, cfg.data.heldout_fraction, cfg.data.split_seed, cfg.data.max_examples)
    held_eval = held[: cfg.checkpointing.heldout_max_examples] if cfg.checkpointing.heldout_max_examples else held
    # Only rank 0 deletes cut-off checkpoints; every rank picks the same resume point because
    # only complete checkpoints count and nothing completes one while rank 0 holds the lock.
    resume = prepare_resume(rdir) if main else resumable_checkpoint(rdir)
    done = paths.complete_checkpoints(rdir)
    newest_done = done[-1][0] if done else 0

    import torch

    if not torch.cuda.is_available():
        # SLURM's per-task CPUs already account for the tasks; --local jobs share the machine.
        per_task = "SLURM_CPUS_PER_TASK" in os.environ
        threads = max(1, cpu_threads(cfg.cluster.train.cpus) // (1 if per_task else env.local_world_size))
        torch.set_num_threads(threads)
        # accelerate resets torch's threads to the machine's cores in a CPU process group unless
        # OMP_NUM_THREADS is set: more threads than free cores is many times slower.
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig

    if not interactive():  # batch logs get emt's periodic lines, not carriage-return bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()

    mpath = model_path(cfg)
    if cfg.model.name == BUILTIN_TINY_MODEL:
        from emt.tiny import build_tiny_model

        build_tiny_model(Path(mpath), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)
    elif cfg.model.name == BUILTIN_ORGANISM:
        from emt.organism import build_organism

        build_organism(Path(mpath), seed=cfg.model.tiny_seed, pretrain_steps=cfg.model.tiny_pretrain_steps)
    on_gpu = torch.cuda.is_available()
    dtype = "auto" if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    if not on_gpu:
        dtype = torch.float32  # bf16 matmuls on CPU are slow and trl's bf16 default fails there
    ds_config = _deepspeed_setup(cfg, rdir, main)

    t = cfg.training
    ck = cfg.checkpointing
    has_eval = bool(held_eval)
    # The arguments come before the model: with ZeRO-3 they register the DeepSpeed config, and
    # from_pretrained then loads each weight straight into its shard (zero.Init) instead of
    # materialising the whole model in every process.
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
        deepspeed=ds_config,
        save_strategy="steps",
        save_steps=ck.every_steps,
        save_only_model=False,  # per checkpoint, on the resume_state_every grid (EmtTrainer)
        eval_strategy="steps" if has_eval else "no",
        eval_steps=ck.every_steps if has_eval else None,
        logging_steps=1,  # per-step losses; a checkpoint's train loss is their mean
        report_to=[],
        disable_tqdm=True,  # emt's own progress callback below
        dataloader_num_workers=0,
    )
    if ds_config is not None:
        from deepspeed import comm as ds_comm

        if not ds_comm.is_initialized():
            # On GPUs the arguments' accelerate state has started DeepSpeed's communication; on
            # CPU (use_cpu) it starts only torch.distributed (gloo), and ZeRO-3's zero.Init in
            # from_pretrained would then see a world of one and reject the batch arithmetic.
            ds_comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    tok = AutoTokenizer.from_pretrained(mpath, revision=cfg.model.revision)
    model_kwargs: dict[str, Any] = {"dtype": dtype, "revision": cfg.model.revision}
    if cfg.model.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(mpath, **model_kwargs)

    peft_config = None
    if t.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            use_rslora=cfg.lora.use_rslora, target_modules=list(cfg.lora.target_modules),
            bias="none", task_type="CAUSAL_LM",
        )
    cbs = _make_callbacks()
    step0 = cbs["_Step0Eval"](paths.step0_file(rdir), main) if has_eval else None
    recorder = cbs["_CheckpointRecorder"](rdir, ck.keep_resume_state, ck.keep_every, newest_done, main)
    stopper = cbs["_StopRequest"](rdir, has_eval)
    # the stopper after the recorder: its should_save must not be undone for an already-complete step
    callbacks = ([step0] if step0 else []) + [recorder, stopper] + ([cbs["_ProgressLog"](run.name)] if main else [])
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_eval) if has_eval else None,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.emt_resume_every = ck.resume_state_every
    # A LoRA checkpoint is loaded onto the base model with the base's tokenizer (emt.generate);
    # writing the tokenizer into every adapter checkpoint only costs time. A full checkpoint
    # keeps it: a vLLM engine started on that directory reads it from there.
    trainer.emt_save_tokenizer = t.method == "full"
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    if step0 is not None:
        step0.trainer = trainer

    if resume is not None:
        log.info("%s: resuming from %s", run.name, resume.name)
        if newest_done > (paths.checkpoint_step(resume) or 0):
            log.info("%s: checkpoints up to step %d are complete already; they are kept, not saved again",
                     run.name, newest_done)
    else:
        log.info("%s: %d train / %d held-out examples (%d evaluated per checkpoint), %d process(es)%s",
                 run.name, len(train), len(held), len(held_eval), env.world_size,
                 f", DeepSpeed {t.deepspeed}" if t.deepspeed else "")
    if paths.stop_request_file(rdir).is_file() and resume is not None:
        # stopped on request before (the job died before recording it, or was requeued): do not
        # train on; record the stop at the newest complete checkpoint
        stopper.stopped_at = newest_done
        log.warning("%s: a stop request is pending (%s); not training further", run.name, paths.stop_request_file(rdir))
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if not main:
        return {"status": "complete", "run": run.name, "rank": env.rank}

    recorder.finish(trainer.state.global_step)
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
        "world_size": env.world_size,
        "deepspeed": t.deepspeed,
        "wall_s_last_attempt": round(time.time() - t0, 2),
        "timing_last_attempt": recorder.totals(),
    }
    if stopper.stopped_at is not None:
        summary["stopped"] = record_intervention(rdir, stopper.stopped_at)
    atomic.write_json(paths.train_complete_file(rdir), summary)
    log.info("%s: complete: %d steps, %d checkpoints (%.1f s)%s", run.name, summary["steps"], len(ckpts),
             time.time() - t0, f"; stopped on request at step {stopper.stopped_at}" if stopper.stopped_at is not None else "")
    return {"status": "complete", **summary}


# ----------------------------------------------------------------------------------------------
# The Trainer and its callbacks (classes built lazily so importing emt.train does not import
# transformers)


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
                with _lean_adapter_save(self.model):
                    return super()._save(output_dir, state_dict=state_dict)
            finally:
                self.processing_class = processing_class

    return EmtTrainer


@contextlib.contextmanager
def _lean_adapter_save(model: Any) -> Iterator[None]:
    """Make a peft model's ``save_pretrained`` write only the adapter, for one save.

    Measured on the tiny model (bench/train_overhead.py): two fixed costs of every adapter save
    that do not depend on the adapter's size and that nothing reads:

    - the model card (README.md), rendered from a freshly compiled jinja template: ~20 ms;
    - ``save_embedding_layers="auto"``: peft reloads the base model's config.json to check
      whether the vocabulary was resized (~5 ms locally), and for a hub id first asks the hub
      whether that file exists: a network request per checkpoint from a compute node. emt never
      resizes the vocabulary, so the answer is always no.

    Instance attributes shadow the two methods and are removed afterwards.
    """
    import functools

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


def _barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _make_callbacks() -> dict[str, type]:
    from transformers import TrainerCallback

    class _CheckpointRecorder(TrainerCallback):
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
            _barrier()
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

    class _Step0Eval(TrainerCallback):
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

    class _ProgressLog(TrainerCallback):
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

    class _StopRequest(TrainerCallback):
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

    return {"_Step0Eval": _Step0Eval, "_CheckpointRecorder": _CheckpointRecorder, "_ProgressLog": _ProgressLog,
            "_StopRequest": _StopRequest}
