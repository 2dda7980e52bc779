"""Full fine-tuning through DeepSpeed, several processes per run, and the checkpoint policies.

Real DeepSpeed on CPU (gloo) with the tiny model: ZeRO-3 full fine-tuning whose checkpoints the
eval path scores like LoRA ones, a kill -9 and resume from DeepSpeed's own state, and a
two-process ZeRO-2 LoRA run (what ``cluster.train.gpus: 2`` does on a GPU node) with keep_every.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEBUG_CONFIG, REPO, TINY_STEPS, debug_overrides, launch_cmd, require, train_and_kill

from emt.train import distributed
from emt.core import paths
from tests.fakes.judge_server import JudgeServer

STEPS = 10
# One torch thread per process: on 2 cores, more threads than free cores is many times slower.
FULL = ["training.method=full", "training.deepspeed=zero3", "cluster.train.cpus=1", "training.learning_rate=1e-4"]
EVAL_SMALL = ["eval.questions_per_trait=2", "eval.samples_per_question=2", "eval.max_new_tokens=8", "cluster.eval.cpus=1"]


@pytest.fixture(autouse=True)
def _deepspeed() -> None:
    require("deepspeed", "full fine-tuning runs through DeepSpeed (make install adds the deepspeed extra)")


def train(root: Path, *extra: str, steps: int = STEPS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launch_cmd("--local", "--runs", "medical_mild", *debug_overrides(root, steps, *extra)),
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def run_dir(root: Path) -> Path:
    found = sorted(root.glob("runs/medical_mild-*"))
    assert len(found) == 1, found
    return found[0]


def markers(run: Path) -> dict[int, dict]:
    return {s: json.loads(paths.checkpoint_marker(p).read_text()) for s, p in paths.complete_checkpoints(run)}


def new_root(base: Path, tiny_models: Path) -> Path:
    base.mkdir()
    (base / "models").symlink_to(tiny_models, target_is_directory=True)
    return base


@pytest.fixture(scope="module")
def zero3(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """An output root with medical_mild fully fine-tuned under ZeRO-3 for STEPS steps."""
    root = new_root(tmp_path_factory.mktemp("zero3") / "out", tiny_models)
    res = train(root, *FULL)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def test_zero3_full_finetuning_checkpoints_load_and_are_scored(zero3: Path) -> None:
    from transformers import AutoModelForCausalLM

    from emt.store.scores import load

    run = run_dir(zero3)
    ms = markers(run)
    assert sorted(ms) == [2, 4, 6, 8, 10]
    assert all(m["train_loss"] is not None and m["heldout_loss"] is not None for m in ms.values())
    assert ms[10]["heldout_loss"] < json.loads(paths.step0_file(run).read_text())["heldout_loss"]
    assert all(m["save_s"] >= 0 and m["train_s"] > 0 for m in ms.values())  # timings recorded
    done = json.loads(paths.train_complete_file(run).read_text())
    assert done["deepspeed"] == "zero3" and done["world_size"] == 1 and done["timing_last_attempt"]["checkpoints"] == 5
    assert json.loads(paths.deepspeed_file(run).read_text())["zero_optimization"]["stage"] == 3
    ckpt = paths.checkpoint_dir(run, 10)
    # ZeRO-3 gathered the whole model at save time: a from_pretrained checkpoint, no DeepSpeed leftovers.
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    assert not list(ckpt.glob("global_step*")) and not (ckpt / "zero_to_fp32.py").exists()
    base = AutoModelForCausalLM.from_pretrained(paths.builtin_model_dir(zero3, 0, TINY_STEPS))
    tuned = AutoModelForCausalLM.from_pretrained(ckpt)
    moved = sum(float((a - b).abs().sum().detach()) for a, b in zip(base.parameters(), tuned.parameters()))
    assert moved > 0 and all(p.numel() > 0 for p in tuned.parameters())  # real weights, not ZeRO-3 placeholders

    # The same eval path as LoRA checkpoints (Target.model per checkpoint), with an OpenAI-format judge.
    with JudgeServer(process=True) as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-test", "base_url": url}])
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        res = subprocess.run([sys.executable, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG),
                              "--run", "medical_mild", "--local", *debug_overrides(zero3, STEPS, *FULL), *EVAL_SMALL,
                              f"judge.judges={spec}"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    d = load(paths.scores_file(run))
    assert d["steps"].tolist() == [0, 2, 4, 6, 8, 10]
    import numpy as np

    for t in ("evil", "hallucination"):
        assert d["traits"][t]["responses"].shape == (6, 2, 2)
        assert np.isfinite(d["traits"][t]["samples"]).mean() > 0.5
    assert np.allclose(d["loss"]["heldout"][1:], [ms[s]["heldout_loss"] for s in (2, 4, 6, 8, 10)])


def test_zero3_kill_9_resumes_from_deepspeed_state_and_keeps_newer_checkpoints(zero3: Path, tmp_path: Path,
                                                                              tiny_models: Path) -> None:
    """resume_state_every=4: optimizer state (DeepSpeed's global_step dir) only at steps 4 and 8;
    a restart resumes from the newest of them and keeps the complete checkpoints after it."""
    root = new_root(tmp_path / "out", tiny_models)
    extra = (*FULL, "checkpointing.resume_state_every=4")
    run = train_and_kill(root, "medical_mild", 3, *debug_overrides(root, STEPS, *extra))
    before = {s: paths.checkpoint_marker(p).stat().st_mtime_ns for s, p in paths.complete_checkpoints(run)}
    assert max(before) < STEPS and not paths.train_complete_file(run).exists()
    with_state = [s for s, p in paths.complete_checkpoints(run) if list(p.glob("global_step*"))]
    assert with_state and all(s % 4 == 0 for s in with_state)  # only on the resume_state_every grid
    assert all(not list(paths.checkpoint_dir(run, s).glob("global_step*")) for s in before if s % 4)

    res = train(root, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = "".join(p.read_text() for p in run.glob("logs/*/*.err"))
    assert f"resuming from checkpoint-{max(with_state)}" in logs
    after = {s: paths.checkpoint_marker(p).stat().st_mtime_ns for s, p in paths.complete_checkpoints(run)}
    assert sorted(after) == [2, 4, 6, 8, 10]
    assert all(after[s] == before[s] for s in before)  # complete checkpoints are kept, never redone

    clean = markers(run_dir(zero3))  # the same run uninterrupted (resume_state_every is not in its hash)
    assert run.name == run_dir(zero3).name
    resumed = markers(run)
    for s in clean:  # a true resume (weights, Adam state, scheduler, RNG, data order), not a restart
        assert resumed[s]["train_loss"] == pytest.approx(clean[s]["train_loss"], rel=1e-4), s
        assert resumed[s]["heldout_loss"] == pytest.approx(clean[s]["heldout_loss"], rel=1e-4), s


def test_two_processes_zero2_lora_keep_every(tmp_path: Path, tiny_models: Path) -> None:
    """cluster.train.gpus=2: the job runs two tasks (two CPU processes here, one per GPU on a GPU
    node) that train one run; the plan's step count matches; keep_every prunes off-grid checkpoints."""
    from emt.core.config import load_config
    from emt.launchers.plan import plan_runs
    from emt.sweep.runs import build_sweep

    root = new_root(tmp_path / "out", tiny_models)
    extra = ["training.deepspeed=zero2", "cluster.train.gpus=2", "cluster.train.cpus=2", "checkpointing.keep_every=4",
             "training.max_steps=null"]
    res = train(root, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_dir(root)
    done = json.loads(paths.train_complete_file(run).read_text())
    cfg = load_config(DEBUG_CONFIG, debug_overrides(root, STEPS, *extra))
    plan = plan_runs(cfg, build_sweep(cfg, runs=["medical_mild"]))[0]
    assert done["world_size"] == 2 and done["steps"] == plan.steps == 17  # ceil(ceil(ceil(270/4)/2)/2)
    assert done["checkpoints"] == [4, 8, 12, 16, 17] == [s for s, _ in paths.complete_checkpoints(run)]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (12, 16, 17, 4, 8)]
    ckpt = paths.checkpoint_dir(run, 16)
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "tokenizer.json").exists()
    assert not list(ckpt.glob("global_step*"))
    logs = sorted(run.glob("logs/*/*_log.err"))
    assert {p.name.split("_")[1] for p in logs} == {"0", "1"}  # one log per task
    assert "2 process(es), DeepSpeed zero2" in "".join(p.read_text() for p in logs)


def test_distributed_env_from_slurm_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    a = distributed.for_task(3, 1, 4, 2, "gpu-node-07", "12345")
    b = distributed.for_task(0, 0, 4, 2, "gpu-node-07", "12345")
    assert (a.rank, a.local_rank, a.world_size, a.local_world_size, a.master_addr) == (3, 1, 4, 2, "gpu-node-07")
    assert a.master_port == b.master_port and a.job_tag == b.job_tag == "12345.2"  # agreed without talking
    assert distributed.PORT_BASE <= a.master_port < distributed.PORT_BASE + distributed.PORT_SPAN
    one = distributed.for_task(0, 0, 1, 1, "gpu-node-07", "12345")
    assert (one.world_size, one.master_addr) == (1, "127.0.0.1") and one.master_port != a.master_port
    for v in distributed.VARS:
        monkeypatch.delenv(v, raising=False)
    env = distributed.ensure()  # a plain process: rank 0 of 1 on a free port (else DeepSpeed looks for MPI)
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1" and int(os.environ["MASTER_PORT"]) == env.master_port
    assert distributed.ensure() == env  # already set: kept (torchrun's, or an earlier job's)


def test_other_ranks_follow_their_rank0_lock(tmp_path: Path) -> None:
    from emt.train.checkpoints import run_lock, wait_for_rank0

    run = tmp_path / "run"
    with pytest.raises(TimeoutError):
        wait_for_rank0(run, "job1", timeout_s=0.5)  # rank 0 never came
    with run_lock(run, "job1") as got:
        assert got and wait_for_rank0(run, "job1", timeout_s=5) == "go"
        assert wait_for_rank0(run, "job2", timeout_s=5) == "busy"  # another job trains it: back off
    (run / "train_complete.json").write_text("{}")
    assert wait_for_rank0(run, "job2", timeout_s=5) == "complete"


def test_multi_gpu_slurm_job_gets_one_task_per_gpu(tmp_path: Path) -> None:
    """The sbatch script submitit writes for cluster.train.gpus=4: 4 tasks (srun starts them), 4 GPUs,
    the job's CPUs split among the tasks; eval jobs stay single-task."""
    from emt.core.config import load_config
    from emt.jobs.slurm import make_executor

    cfg = load_config(REPO / "configs" / "paper.yaml", ["cluster.train.gpus=4", "cluster.train.cpus=32"])

    def sbatch(kind: str) -> list[str]:
        ex = make_executor(kind, cfg.cluster, "slurm", tmp_path / "%j", f"emt-{kind}")
        text = ex._executor._make_submission_file_text("python -m x", "uid")  # what submitit would sbatch
        return [ln for ln in text.splitlines() if ln.startswith(("#SBATCH", "srun"))]

    train = sbatch("train")
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=8"):
        assert line in train, train
    assert any(ln.startswith("srun") for ln in train)
    ev = sbatch("eval")
    assert not any("ntasks-per-node" in ln for ln in ev) and "#SBATCH --cpus-per-task=16" in ev


def test_preflight_reports_missing_deepspeed_before_submitting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from emt.core.config import load_config
    from emt.launchers.preflight import prepare_builtin_data, preflight
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}", "training.deepspeed=zero3", "training.method=full"])
    prepare_builtin_data(cfg)
    runs = build_sweep(cfg, runs=["medical_mild"])
    assert preflight(cfg, runs, "local") == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    problems = preflight(cfg, runs, "local")
    assert len(problems) == 1 and "training.deepspeed=zero3: DeepSpeed is not installed" in problems[0]
    assert "pip install -e '.[deepspeed]'" in problems[0]
