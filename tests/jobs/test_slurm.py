"""The SLURM path for real: a single-node cluster (slurm/local-cluster.sh) and submitit.

The cluster advertises 4 fake GPUs (GRES backed by /dev/null), so ``--gpus-per-node=1`` schedules
and sets CUDA_VISIBLE_DEVICES while the work runs on CPU. Outside CI these tests skip when the
cluster cannot be started here (not root, no apt); under CI that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import DEBUG_CONFIG, REPO, TINY_STEPS

from emt.core import paths
from tests.fakes.judge_server import JudgeServer

CLUSTER_SH = REPO / "slurm" / "local-cluster.sh"
# One CPU per job keeps torch to one thread each: concurrent jobs on 2 cores stay fast.
SLURM_OVERRIDES = ["cluster.partition=debug", "cluster.train.cpus=1", "cluster.eval.cpus=1",
                   "cluster.train.mem_gb=2", "cluster.eval.mem_gb=2", "cluster.consolidate.mem_gb=1",
                   "cluster.train.time_min=20", "cluster.eval.time_min=20", "cluster.consolidate.time_min=10"]
EVAL_SMALL = ["eval.questions_per_trait=2", "eval.samples_per_question=2", "eval.max_new_tokens=8"]


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start (or find running) the local cluster."""
    why = None
    if os.geteuid() != 0:
        why = "not root: the local cluster needs root to install and start SLURM daemons"
    elif shutil.which("apt-get") is None and shutil.which("sbatch") is None:
        why = "no apt-get to install SLURM and no SLURM installed"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM tests must run under CI: {why}")
        pytest.skip(why)
    res = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"local cluster did not start:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.fixture
def slurm_root(tmp_path: Path, tiny_models: Path, slurm_cluster: None) -> Path:
    root = tmp_path / "out"
    root.mkdir()
    (root / "models").symlink_to(tiny_models, target_is_directory=True)
    return root


def overrides(root: Path, max_steps: int, *extra: str) -> list[str]:
    return [f"cluster.output_root={root}", f"model.tiny_pretrain_steps={TINY_STEPS}",
            f"training.max_steps={max_steps}", *SLURM_OVERRIDES, *extra]


def launch(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "launch" / script), "--config", str(DEBUG_CONFIG), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def sacct(job_ids: list[str], fields: str = "JobID,State,Start,End,ReqTRES") -> list[dict[str, str]]:
    """sacct rows (allocations only) for jobs and arrays; waits out sacct's lag behind squeue."""
    names = fields.split(",")
    for _ in range(30):
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", fields],
                             capture_output=True, text=True, timeout=60).stdout
        rows = [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]
        if rows and all(r["State"] not in ("PENDING", "RUNNING", "REQUEUED") for r in rows):
            return rows
        time.sleep(1)
    return rows


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_train_sweep_on_slurm(slurm_root: Path) -> None:
    res = launch("train.py", "--sweep", "all", "--wait", *overrides(slurm_root, 4))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    ids = [json.loads(p.read_text())["job_id"] for p in slurm_root.glob("runs/*/submission.json")]
    assert len(ids) == 6 and all(json.loads(p.read_text())["mode"] == "slurm" for p in slurm_root.glob("runs/*/submission.json"))
    rows = sacct(ids)
    assert len(rows) == 6 and all(r["State"] == "COMPLETED" for r in rows), rows
    assert all("gres/gpu=1" in r["ReqTRES"] for r in rows), rows  # each run asked for one GPU
    for run in slurm_root.glob("runs/*"):
        assert [s for s, _ in paths.complete_checkpoints(run)] == [2, 4]
        assert paths.train_complete_file(run).is_file()
    again = launch("train.py", "--sweep", "all", *overrides(slurm_root, 4))
    assert again.returncode == 0 and "Nothing to submit" in again.stdout


def test_eval_array_parallelism_and_dependency(slurm_root: Path) -> None:
    assert launch("train.py", "--runs", "medical_mild", "--wait", *overrides(slurm_root, 6)).returncode == 0
    ov = overrides(slurm_root, 6, "cluster.array_parallelism=2", *EVAL_SMALL)
    res = launch("eval_array.py", "--run", "medical_mild", "--per-task", "1", "--wait", *ov)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run = next(slurm_root.glob("runs/medical_mild-*"))
    rec = json.loads(paths.eval_submission_file(run).read_text())
    tasks = sacct(rec["array_job_ids"])
    cons = sacct([rec["consolidate_job_id"]])[0]
    assert len(tasks) == 4 and all(t["State"] == "COMPLETED" for t in tasks), tasks
    events = sorted([(ts(t["Start"]), 1) for t in tasks] + [(ts(t["End"]), -1) for t in tasks], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2, tasks  # --array=0-3%2
    assert cons["State"] == "COMPLETED" and ts(cons["Start"]) >= max(ts(t["End"]) for t in tasks)
    assert paths.scores_file(run).is_file()

    # A damaged weights file is caught before anything is submitted, naming the checkpoint.
    ckpt = paths.checkpoint_dir(run, 4)
    weights = ckpt / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    for p in run.glob("eval-*/step-*.json"):
        p.unlink()
    res = launch("eval_array.py", "--run", "medical_mild", "--per-task", "2", "--wait", *ov)
    assert res.returncode == 2 and "checkpoint-4" in res.stdout + res.stderr
    weights.write_bytes(good)

    # A task that fails at run time (an adapter config whose rank does not match its weights: no
    # pre-flight reads that far): the consolidation never runs, and status names the task and its log.
    conf = ckpt / "adapter_config.json"
    c = json.loads(conf.read_text())
    c["r"] = int(c["r"]) * 2
    conf.write_text(json.dumps(c))
    scores_before = paths.scores_file(run).read_bytes()
    res = launch("eval_array.py", "--run", "medical_mild", "--per-task", "2", "--wait", *ov)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    rec = json.loads(paths.eval_submission_file(run).read_text())
    states = {r["JobID"]: r["State"] for r in sacct(rec["array_job_ids"] + [rec["consolidate_job_id"]], "JobID,State")}
    assert "FAILED" in states.values()
    assert states[rec["consolidate_job_id"]] in ("CANCELLED", "PENDING"), states  # never ran
    assert paths.scores_file(run).read_bytes() == scores_before
    st = launch("status.py", *ov)
    assert st.returncode == 1
    failed = [j for j, s in states.items() if s == "FAILED"][0]
    assert f"eval task {failed} FAILED" in st.stdout and f"{failed}_0_log.err" in st.stdout
    log = Path(st.stdout.split(f"eval task {failed} FAILED: ")[1].split()[0])
    assert log.is_file() and "mismatch" in log.read_text().lower()
    subprocess.run(["scancel", rec["consolidate_job_id"]], capture_output=True, timeout=30)


def test_scontrol_requeue_resumes_training(slurm_root: Path) -> None:
    # submitit jobs ignore the SIGTERM of a requeue; SLURM kills them KillWait (5 s) later, so the
    # run must outlast that for the requeued job to have something to resume.
    steps = 80
    res = launch("train.py", "--runs", "math_normal", *overrides(slurm_root, steps))
    assert res.returncode == 0, res.stderr[-3000:]
    run = next(slurm_root.glob("runs/math_normal-*"))
    job = json.loads(paths.submission_file(run).read_text())["job_id"]
    deadline = time.time() + 600
    while time.time() < deadline and len(paths.complete_checkpoints(run)) < 3:
        time.sleep(0.2)
    before = [s for s, _ in paths.complete_checkpoints(run)]
    assert 3 <= len(before) < steps // 2, "the job finished before it could be requeued; raise steps"
    subprocess.run(["scontrol", "requeue", str(job)], check=True, capture_output=True, timeout=30)
    while time.time() < deadline and not paths.train_complete_file(run).is_file():
        time.sleep(0.5)
    assert paths.train_complete_file(run).is_file(), "the requeued job did not finish"
    assert [s for s, _ in paths.complete_checkpoints(run)] == list(range(2, steps + 1, 2))
    logs = "".join(p.read_text() for p in run.glob("logs/*/*.err"))
    assert "resuming from checkpoint-" in logs
    resumed_from = int(logs.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_from >= before[-1]


def test_openai_judge_without_key_fails_before_sbatch(slurm_root: Path) -> None:
    assert launch("train.py", "--runs", "math_mild", "--wait", *overrides(slurm_root, 2)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    spec = json.dumps([{"backend": "openai", "model": "gpt-4.1-mini-2025-04-14"}])
    res = launch("eval_array.py", "--run", "math_mild", *overrides(slurm_root, 2, f"judge.judges={spec}"), env=env)
    assert res.returncode == 2 and "OPENAI_API_KEY" in res.stderr and "export OPENAI_API_KEY" in res.stderr
    run = next(slurm_root.glob("runs/math_mild-*"))
    assert not paths.eval_submission_file(run).exists() and not list(run.glob("eval-*"))


def test_api_key_never_written(slurm_root: Path) -> None:
    secret = "sk-emt-test-SENTINEL-0123456789"
    env = dict(os.environ, OPENAI_API_KEY=secret)
    assert launch("train.py", "--runs", "math_strong", "--wait", *overrides(slurm_root, 2), env=env).returncode == 0
    with JudgeServer(process=True) as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-test", "base_url": url}])
        res = launch("eval_array.py", "--run", "math_strong", "--wait",
                     *overrides(slurm_root, 2, f"judge.judges={spec}", *EVAL_SMALL), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert secret not in res.stdout + res.stderr
    written = [p for p in slurm_root.rglob("*") if p.is_file() and not p.is_symlink() and "models" not in p.parts]
    assert any(p.suffix == ".pkl" for p in written) and any(p.name.endswith("_log.out") for p in written)
    leaks = [p for p in written if secret.encode() in p.read_bytes()]
    assert leaks == []


def test_plain_sbatch_templates(slurm_root: Path) -> None:
    """slurm/*.sbatch: the same work as the launchers, submitted with plain sbatch."""
    ov = " ".join(overrides(slurm_root, 4, *EVAL_SMALL))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", CONFIG=str(DEBUG_CONFIG),
               RUN="medical_normal", OVERRIDES=ov, TASKS="2")
    small = ["--partition=debug", "--cpus-per-task=1", "--mem=2G", "--time=20", f"--chdir={REPO}",
             f"--output={slurm_root}/sbatch-%x-%j.out"]

    def sbatch(*args: str) -> str:
        res = subprocess.run(["sbatch", "--parsable", *small, *args], capture_output=True, text=True, env=env,
                             timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().split(";")[0]

    train = sbatch("--wait", str(REPO / "slurm" / "train.sbatch"))
    assert sacct([train], "JobID,State")[0]["State"] == "COMPLETED"
    run = next(slurm_root.glob("runs/medical_normal-*"))
    assert [s for s, _ in paths.complete_checkpoints(run)] == [2, 4]
    array = sbatch("--array=0-1%2", str(REPO / "slurm" / "eval.sbatch"))
    cons = sbatch("--wait", f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes",
                  str(REPO / "slurm" / "consolidate.sbatch"))
    states = {r["JobID"]: r["State"] for r in sacct([array, cons], "JobID,State")}
    assert set(states.values()) == {"COMPLETED"} and len(states) == 3, states
    from emt.store.scores import load

    assert load(paths.scores_file(run))["steps"].tolist() == [0, 2, 4]


def test_judge_server_job_on_slurm(slurm_root: Path) -> None:
    """launch/judge_serve.py submits the serve job through sbatch; the eval array's tasks (other
    SLURM jobs) find the server through `serve:<name>`; --stop cancels it and the endpoint goes."""
    from emt.eval.serve import healthy, read_endpoint

    assert launch("train.py", "--runs", "math_normal", "--wait", *overrides(slurm_root, 2)).returncode == 0
    command = [sys.executable, "-m", "tests.fakes.judge_server", "--host", "{host}", "--port", "{port}", "--lifetime", "600",
               "--api-key-env", "VLLM_API_KEY"]  # the serve job's generated token, as vllm serve reads it
    serve = json.dumps([{"name": "fake", "model": "judge-served", "host": "127.0.0.1", "command": command,
                         "time_min": 20, "gpus": 0, "cpus": 1, "mem_gb": 1}])
    judges = json.dumps([{"backend": "openai", "model": "judge-served", "base_url": "serve:fake"}])
    ov = overrides(slurm_root, 2, f"judge.servers={serve}", f"judge.judges={judges}", *EVAL_SMALL)
    started = launch("judge_serve.py", "--name", "fake", "--wait", *ov, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    rec = json.loads(paths.serve_submission_file(slurm_root, "fake").read_text())
    assert rec["mode"] == "slurm" and "serving judge-served at http://127.0.0.1:" in started.stdout
    ep = read_endpoint(slurm_root, "fake")
    assert ep is not None and ep["job_id"] == rec["job_id"]
    try:
        res = launch("eval_array.py", "--run", "math_normal", "--per-task", "2", "--wait", *ov)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        from emt.store.scores import load

        run = next(slurm_root.glob("runs/math_normal-*"))
        d = load(paths.scores_file(run))
        assert d["steps"].tolist() == [0, 2] and json.loads(d["attrs"]["judge_models"]) == ["judge-served"]
    finally:
        stop = launch("judge_serve.py", "--name", "fake", "--stop", *ov)
    assert stop.returncode == 0 and f"cancelled job {rec['job_id']}" in stop.stdout
    # --stop returns once the job has ended and no endpoint file is left, whatever the job's timing.
    assert not paths.serve_endpoint_file(slurm_root, "fake").exists()
    assert not healthy(ep["base_url"], 1.0, api_key=ep["api_key"])
