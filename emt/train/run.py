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

The lock and checkpoint bookkeeping live in :mod:`emt.train.checkpoints`, the Trainer callbacks
in :mod:`emt.train.callbacks`; here is the order of the steps.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emt.core import atomic, dsconfig, paths
from emt.core.config import Config, to_yaml
from emt.core.logs import interactive, setup_logging
from emt.core.provenance import collect
from emt.core.runtime import cpu_threads
from emt.store import tracker
from emt.sweep.data import DataError, file_sha256, read_chat_jsonl, split_heldout
from emt.sweep.models import model_path, prepare_builtin_model
from emt.sweep.runs import Run, train_world_size
from emt.train import checkpoints, distributed
from emt.train.callbacks import CheckpointRecorder, ProgressLog, Step0Eval, StopRequest, trainer_callback

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The job


def train_run(run: Run) -> dict[str, Any]:
    """Train one run to completion (or resume it); safe to call any number of times, and by
    every rank of a multi-process job (see the module docstring)."""
    setup_logging()
    env = _process_world(run)
    rdir = run.path
    done_file = paths.train_complete_file(rdir)
    if done_file.is_file():
        log.info("%s: already complete (%s); nothing to do", run.name, done_file)
        return {"status": "complete", "run": run.name, "skipped": True}
    if not env.is_main:
        state = checkpoints.wait_for_rank0(rdir, env.job_tag)
        if state != "go":
            return {"status": state, "run": run.name, "skipped": True}
        return _train_locked(run, env)
    retry_s = checkpoints.LOCK_RETRY_S if env.world_size > 1 else 0.0
    with checkpoints.run_lock(rdir, env.job_tag, retry_s=retry_s) as locked:
        if not locked:
            log.warning("%s: another process is training this run (%s); leaving it alone",
                        run.name, paths.lock_file(rdir))
            return {"status": "busy", "run": run.name}
        return _train_locked(run, env)


def _process_world(run: Run) -> distributed.DistEnv:
    """This process's place in the job; raises when the job's size is not the planned one."""
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
    return env


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
    ds = dsconfig.load(cfg.training.deepspeed)
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


@dataclass
class _Examples:
    """The run's examples: training, held-out, and the held-out ones evaluated per checkpoint."""

    train: list[dict[str, Any]]
    held: list[dict[str, Any]]
    held_eval: list[dict[str, Any]]


def _write_run_files(run: Run) -> None:
    """Identity, resolved config and provenance of the run (rank 0)."""
    atomic.write_json(paths.run_info_file(run.path), run.identity())
    atomic.write_text(paths.resolved_config_file(run.path), to_yaml(run.config))
    atomic.write_json(paths.provenance_file(run.path), collect(run.hash))


def _load_examples(run: Run) -> _Examples:
    """The run's data, split as planned; raises DataError when the file changed since planning."""
    cfg = run.config
    if run.data_sha256 is not None and file_sha256(run.data_file) != run.data_sha256:
        raise DataError([f"{run.data_file}: changed since this run was planned (its hash is part of "
                         f"the run's identity); relaunch to plan a new run"])
    examples = read_chat_jsonl(run.data_file)
    train, held = split_heldout(examples, cfg.data.heldout_fraction, cfg.data.split_seed, cfg.data.max_examples)
    held_eval = held[: cfg.checkpointing.heldout_max_examples] if cfg.checkpointing.heldout_max_examples else held
    return _Examples(train, held, held_eval)


def _setup_torch(cfg: Config, env: distributed.DistEnv) -> None:
    """CPU threads for this process, and no progress bars from datasets/transformers in batch logs."""
    import torch

    if not torch.cuda.is_available():
        # SLURM's per-task CPUs already account for the tasks; --local jobs share the machine.
        per_task = "SLURM_CPUS_PER_TASK" in os.environ
        threads = max(1, cpu_threads(cfg.cluster.train.cpus) // (1 if per_task else env.local_world_size))
        torch.set_num_threads(threads)
        # accelerate resets torch's threads to the machine's cores in a CPU process group unless
        # OMP_NUM_THREADS is set: more threads than free cores is many times slower.
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if not interactive():  # batch logs get emt's periodic lines, not carriage-return bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def _training_arguments(cfg: Config, run_dir: Path, ds_config: dict[str, Any] | None, has_eval: bool) -> Any:
    """trl's SFTConfig for the run: the checkpoint grid, held-out evaluation at each checkpoint,
    per-step losses, and DeepSpeed when configured."""
    import torch
    from trl import SFTConfig

    t = cfg.training
    on_gpu = torch.cuda.is_available()
    # transformers' tracker callbacks take their log dir (TensorBoard) and run id (wandb, shared
    # with the evaluation's logging) from the environment: point them into the run directory.
    tracker.require(t.report_to)
    os.environ.update(tracker.trainer_env(run_dir, run_dir.name, t.report_to))
    return SFTConfig(**sft_kwargs(cfg, run_dir, ds_config, has_eval, on_gpu))


def sft_kwargs(cfg: Config, run_dir: Path, ds_config: dict[str, Any] | None, has_eval: bool,
               on_gpu: bool) -> dict[str, Any]:
    """The keyword arguments of the run's SFTConfig: emt's own (every one named in
    emt.core.config.SFT_MANAGED) plus training.sft_args, which may not set any of those."""
    t = cfg.training
    ck = cfg.checkpointing
    own = dict(
        output_dir=str(run_dir),
        run_name=run_dir.name,
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
        report_to=list(t.report_to),  # [] = none
        disable_tqdm=True,  # emt's own progress callback (emt.train.callbacks.ProgressLog)
        dataloader_num_workers=0,
    )
    clash = sorted(set(own) & set(t.sft_args))
    if clash:  # load_config refuses these; a Config built another way must not override emt silently
        raise ValueError(f"training.sft_args sets {clash}, which emt sets itself (see emt.core.config.SFT_MANAGED)")
    return {**own, **t.sft_args}


def _start_deepspeed_comm() -> None:
    """Start DeepSpeed's communication where the training arguments did not (CPU)."""
    from deepspeed import comm as ds_comm

    if not ds_comm.is_initialized():
        # On GPUs the arguments' accelerate state has started DeepSpeed's communication; on
        # CPU (use_cpu) it starts only torch.distributed (gloo), and ZeRO-3's zero.Init in
        # from_pretrained would then see a world of one and reject the batch arithmetic.
        ds_comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def _load_model(cfg: Config, mpath: str, dtype: Any) -> tuple[Any, Any]:
    """(tokenizer, model) of the base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mpath, revision=cfg.model.revision)
    model_kwargs: dict[str, Any] = {"dtype": dtype, "revision": cfg.model.revision}
    if cfg.model.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(mpath, **model_kwargs)
    return tok, model


def _lora_config(cfg: Config) -> Any:
    """peft's LoraConfig for a LoRA run; None for full fine-tuning."""
    if cfg.training.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        use_rslora=cfg.lora.use_rslora, target_modules=list(cfg.lora.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )


@dataclass
class _Callbacks:
    """The callbacks of one training attempt that the run reads back after training."""

    step0: Step0Eval | None
    recorder: CheckpointRecorder
    stopper: StopRequest
    progress: ProgressLog | None

    def in_order(self) -> list[Any]:
        # the stopper after the recorder: its should_save must not be undone for an already-complete step
        return [cb for cb in (self.step0, self.recorder, self.stopper, self.progress) if cb is not None]


def _make_callbacks(run: Run, main: bool, has_eval: bool, newest_done: int) -> _Callbacks:
    """This attempt's callbacks: step-0 evaluation only with held-out data, progress on rank 0."""
    ck = run.config.checkpointing
    rdir = run.path
    return _Callbacks(
        step0=trainer_callback(Step0Eval, paths.step0_file(rdir), main) if has_eval else None,
        recorder=trainer_callback(CheckpointRecorder, rdir, ck.keep_resume_state, ck.keep_every, newest_done, main),
        stopper=trainer_callback(StopRequest, rdir, has_eval),
        progress=trainer_callback(ProgressLog, run.name) if main else None,
    )


def _make_trainer(cfg: Config, args: Any, tok: Any, model: Any, data: _Examples, callbacks: _Callbacks) -> Any:
    """The Trainer (emt's save policy) on the run's data, with emt's callbacks instead of the
    default printer and progress ones."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    has_eval = bool(data.held_eval)
    trainer = checkpoints.make_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.held_eval) if has_eval else None,
        processing_class=tok,
        peft_config=_lora_config(cfg),
        callbacks=callbacks.in_order(),
    )
    trainer.emt_resume_every = cfg.checkpointing.resume_state_every
    # A LoRA checkpoint is loaded onto the base model with the base's tokenizer (emt.eval.generate);
    # writing the tokenizer into every adapter checkpoint only costs time. A full checkpoint
    # keeps it: a vLLM engine started on that directory reads it from there.
    trainer.emt_save_tokenizer = cfg.training.method == "full"
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    if callbacks.step0 is not None:
        callbacks.step0.trainer = trainer
    return trainer


def _log_start(run: Run, env: distributed.DistEnv, data: _Examples, resume: Path | None, newest_done: int) -> None:
    """One line on where training starts: the resume point, or the data and the job's shape."""
    if resume is not None:
        log.info("%s: resuming from %s", run.name, resume.name)
        if newest_done > (paths.checkpoint_step(resume) or 0):
            log.info("%s: checkpoints up to step %d are complete already; they are kept, not saved again",
                     run.name, newest_done)
    else:
        t = run.config.training
        log.info("%s: %d train / %d held-out examples (%d evaluated per checkpoint), %d process(es)%s",
                 run.name, len(data.train), len(data.held), len(data.held_eval), env.world_size,
                 f", DeepSpeed {t.deepspeed}" if t.deepspeed else "")


def _train_locked(run: Run, env: distributed.DistEnv) -> dict[str, Any]:
    """Train the run, holding its lock (rank 0) or under its rank 0's (other ranks)."""
    cfg = run.config
    rdir = run.path
    main = env.is_main
    t0 = time.time()
    if main:
        _write_run_files(run)
    data = _load_examples(run)
    # Only rank 0 deletes cut-off checkpoints; every rank picks the same resume point because
    # only complete checkpoints count and nothing completes one while rank 0 holds the lock.
    resume = checkpoints.prepare_resume(rdir) if main else checkpoints.resumable_checkpoint(rdir)
    done = paths.complete_checkpoints(rdir)
    newest_done = done[-1][0] if done else 0

    _setup_torch(cfg, env)
    import torch

    mpath = model_path(cfg)
    prepare_builtin_model(cfg)
    dtype = "auto" if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    if not torch.cuda.is_available():
        dtype = torch.float32  # bf16 matmuls on CPU are slow and trl's bf16 default fails there
    ds_config = _deepspeed_setup(cfg, rdir, main)
    has_eval = bool(data.held_eval)
    # The arguments come before the model: with ZeRO-3 they register the DeepSpeed config, and
    # from_pretrained then loads each weight straight into its shard (zero.Init) instead of
    # materialising the whole model in every process.
    args = _training_arguments(cfg, rdir, ds_config, has_eval)
    if ds_config is not None:
        _start_deepspeed_comm()
    tok, model = _load_model(cfg, mpath, dtype)
    callbacks = _make_callbacks(run, main, has_eval, newest_done)
    trainer = _make_trainer(cfg, args, tok, model, data, callbacks)

    _log_start(run, env, data, resume, newest_done)
    if paths.stop_request_file(rdir).is_file() and resume is not None:
        # stopped on request before (the job died before recording it, or was requeued): do not
        # train on; record the stop at the newest complete checkpoint
        callbacks.stopper.stopped_at = newest_done
        log.warning("%s: a stop request is pending (%s); not training further", run.name, paths.stop_request_file(rdir))
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if not main:
        return {"status": "complete", "run": run.name, "rank": env.rank}
    return _finish(run, env, trainer.state.global_step, data, callbacks, t0)


def _finish(run: Run, env: distributed.DistEnv, steps: int, data: _Examples, callbacks: _Callbacks,
            t0: float) -> dict[str, Any]:
    """Rank 0 after training: resume state removed, the stop recorded, ``train_complete.json``
    written last (what marks the run done). Returns the summary."""
    rdir = run.path
    stopped_at = callbacks.stopper.stopped_at
    callbacks.recorder.finish(steps)
    ckpts = paths.complete_checkpoints(rdir)
    for _, p in ckpts:
        checkpoints.strip_resume_state(p)
    summary = {
        "run": run.name,
        "hash": run.hash,
        "steps": steps,
        "checkpoints": [s for s, _ in ckpts],
        "train_examples": len(data.train),
        "heldout_examples": len(data.held),
        "world_size": env.world_size,
        "deepspeed": run.config.training.deepspeed,
        "wall_s_last_attempt": round(time.time() - t0, 2),
        "timing_last_attempt": callbacks.recorder.totals(),
    }
    if stopped_at is not None:
        summary["stopped"] = record_intervention(rdir, stopped_at)
    atomic.write_json(paths.train_complete_file(rdir), summary)
    log.info("%s: complete: %d steps, %d checkpoints (%.1f s)%s", run.name, summary["steps"], len(ckpts),
             time.time() - t0, f"; stopped on request at step {stopped_at}" if stopped_at is not None else "")
    return {"status": "complete", **summary}
