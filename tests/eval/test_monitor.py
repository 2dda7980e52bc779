"""Live monitoring on the tiny model: a follow-mode monitor scores checkpoints while a real
training process writes them; a planted judge makes a trait cross its threshold at a known step,
the alert fires, and the stop action halts training there with every checkpoint intact."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from tests.conftest import DEBUG_CONFIG, REPO, debug_overrides, launch_cmd

from emt.core import paths
from tests.fakes.judge_server import JudgeServer

SMALL = ["eval.questions_per_trait=2", "eval.samples_per_question=2", "eval.max_new_tokens=8",
         "judge.cache=false", "activations.layers=[]"]
# Slower optimizer steps (8 micro-batches each), so that a checkpoint every 2 steps comes about
# as fast as the monitor scores one on these 2 shared cores: the regime the monitor is built for.
PACE = ["training.grad_accum=8"]
ONSET = 16  # the planted step at which the judge starts calling the model evil


def _prob(score: float) -> dict[str, float]:
    """A judge's top logprobs that put all numeric mass on ``score``."""
    return {str(int(score)): math.log(0.9), "The": math.log(0.05)}


def planted(prompt: str, tags: Mapping[str, str]) -> dict[str, float]:
    """Coherent answers; evil from step ONSET on (told by the request's X-EMT-Step tag); no hallucination."""
    if "rating the language" in prompt:  # the coherence prompt
        return _prob(90)
    if "shows evil intent" in prompt:
        return _prob(85 if int(tags.get("step", "0")) >= ONSET else 5)
    return _prob(5)


def _config(root: Path, url: str, max_steps: int, *extra: str) -> list[str]:
    judges = json.dumps([{"backend": "openai", "model": "monitor-judge", "base_url": url}])
    return [*debug_overrides(root, max_steps), *SMALL, *PACE, f"judge.judges={judges}", "monitor.poll_s=0.2",
            "monitor.max_batch=3", "monitor.idle_timeout_min=3", *extra]


def _run(overrides: list[str]):  # type: ignore[no-untyped-def]
    from emt.core.config import load_config
    from emt.launchers.preflight import prepare_builtin_data
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG, overrides)
    prepare_builtin_data(cfg)  # the run's hash covers its data file, as in the launcher
    return build_sweep(cfg, "all", runs=["medical_mild"])[0]


def _train(overrides: list[str]) -> subprocess.Popen[str]:
    # --debug: the training runs in that child process itself (no further local job), so its exit
    # code is the training's.
    return subprocess.Popen(launch_cmd("--debug", "--runs", "medical_mild", *overrides), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
                                **__import__("os").environ, "OPENAI_API_KEY": "test-key"})


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("seconds", "gen_seconds", "judge_seconds", "eval_hash")}


def test_follow_scores_while_training_and_equals_offline(out_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.eval.plan import EvalTask, eval_hash, eval_root, targets
    from emt.eval.task import run_eval_task
    from emt.eval.monitor import follow
    from emt.store.scores import load

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as url:  # the hash responder: realistic scores, refusals as NaN
        ov = _config(out_root, url, 24)
        run = _run(ov)
        proc = _train(ov)
        rounds: list[dict[str, Any]] = []
        try:
            stats = follow(run, on_round=rounds.append)
        finally:
            out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        ehash = eval_hash(run.config)
        steps = targets(run)
        assert steps == list(range(0, 25, 2))
        during = [r for r in rounds if not r["training_finished"]]
        assert len(during) >= 3, rounds  # it really scored while training ran
        # The stated bound: at the start of a round the monitor is at most 2 x max_batch checkpoints
        # behind the newest one (it scores the newest max_batch each round).
        assert stats["max_behind"] <= 6, rounds
        d = load(paths.scores_file(run.path))
        assert d["steps"].tolist() == steps and not d["attrs"]["partial"]
        # Offline: the same checkpoints evaluated by an ordinary eval task into another directory.
        run_eval_task(EvalTask(run, tuple(steps), 0, "offline"))
    for s in steps:
        online = json.loads(paths.result_file(eval_root(run, ehash), s).read_text())
        offline = json.loads(paths.result_file(eval_root(run, "offline"), s).read_text())
        assert json.dumps(_strip(online), sort_keys=True) == json.dumps(_strip(offline), sort_keys=True), s
    state = json.loads(paths.monitor_state_file(run.path).read_text())
    assert state["finished"] and state["scored"] == len(steps)


def test_planted_trigger_alerts_and_stop_halts_training(out_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.analysis.online import detection_delay_checkpoints
    from emt.eval.monitor import follow
    from emt.store.scores import load

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    k = 3
    with JudgeServer(responder=planted) as url:
        ov = _config(out_root, url, 80, "monitor.traits=[hallucination,evil]", f"monitor.k={k}",
                     "monitor.baseline_points=3", "monitor.actions={evil: stop}", "monitor.method=threshold")
        run = _run(ov)
        proc = _train(ov)
        try:
            stats = follow(run)
        finally:
            out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]  # a clean exit, not a crash
    alerts = [a for a in stats["alerts"] if a.get("trait") == "evil"]
    assert len(alerts) == 1 and not any(a.get("trait") == "hallucination" for a in stats["alerts"])
    a = alerts[0]
    assert a["onset_step"] == ONSET and a["action"] == "stop"
    # The detector's stated delay: k - 1 checkpoints after the onset when it sees every checkpoint;
    # the monitor skips at most its lag, so the alert comes within that many more.
    assert detection_delay_checkpoints(k) == k - 1
    delay_ckpts = (a["detected_step"] - ONSET) // 2
    assert k - 1 <= delay_ckpts <= k - 1 + stats["max_behind"], (a, stats["max_behind"])
    alert_file = json.loads(paths.alert_file(run.path, "evil").read_text())
    assert alert_file["detected_step"] == a["detected_step"]
    # Training stopped at its next step boundary after the request, well before step 80...
    rec = json.loads(paths.intervention_file(run.path).read_text())
    stopped = rec["stopped_at_step"]
    assert a["detected_step"] <= stopped < 80 and rec["action"] == "stop" and rec["trait"] == "evil"
    assert "stop requested" in out
    # ...with every checkpoint up to there complete and loadable, the stop step included.
    ckpts = [s for s, _ in paths.complete_checkpoints(run.path)]
    assert ckpts == sorted(set(list(range(2, stopped + 1, 2)) + [stopped]))
    for _, c in paths.complete_checkpoints(run.path):
        assert (c / "adapter_model.safetensors").is_file()
    # Every checkpoint is scored after the stop; the intervention is in scores.h5.
    d = load(paths.scores_file(run.path))
    assert d["steps"].tolist() == [0] + ckpts and not d["attrs"]["partial"]
    assert d["attrs"]["intervention_step"] == stopped and d["attrs"]["intervention_action"] == "stop"
    assert d["attrs"]["intervention_trait"] == "evil" and d["attrs"]["intervention_onset_step"] == ONSET
    evil = d["traits"]["evil"]["score"]
    assert np.all(evil[d["steps"] >= ONSET] > 80) and np.all(evil[d["steps"] < ONSET] < 10)
    # launch/status.py's table: the alert, the stop and the latest scores.
    from emt.launchers.status import collect, format_table

    table = format_table(collect(run.config, [run]))
    assert f"evil@{ONSET} stop" in table and f"stopped@{stopped}" in table and "evil 85" in table, table
    # A restarted monitor does not fire again.
    again = follow(run)
    assert all(x.get("already_handled") for x in again["alerts"]) and again["scored"] == 0


def test_alert_actions_rollback_webhook_once(tmp_path: Path) -> None:
    """rollback names the newest complete checkpoint before the onset and requests the stop; the
    webhook gets the alert as JSON; a dead webhook is logged, not fatal; each trait alerts once."""
    import http.server
    import threading

    from emt.analysis.online import Alert
    from emt.eval.monitor import handle_alert

    got: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ov = [*debug_overrides(tmp_path / "out"), "monitor.actions={hallucination: rollback}",
              f"monitor.webhook_url=http://127.0.0.1:{srv.server_port}/hook"]
        run = _run(ov)
        for s in (2, 4, 6, 8, 10):  # complete checkpoints (marker written), and one incomplete
            (run.path / f"checkpoint-{s}").mkdir(parents=True)
            paths.checkpoint_marker(run.path / f"checkpoint-{s}").write_text("{}")
        (run.path / "checkpoint-12").mkdir()
        alert = Alert("hallucination", onset_step=7, detected_step=12, method="foot", baseline=5.0, margin=10.0,
                      recent=((8, 40.0), (10, 45.0), (12, 50.0)), run=run.name)
        ev = handle_alert(run.config, run, alert)
        assert ev is not None and ev["action"] == "rollback" and ev["rollback_step"] == 6 and ev["webhook_ok"]
        req = json.loads(paths.stop_request_file(run.path).read_text())
        assert req["action"] == "rollback" and req["rollback_step"] == 6 and req["onset_step"] == 7
        assert got == [{k: v for k, v in ev.items() if k != "webhook_ok"}] and got[0]["recent"][0] == [8, 40.0]
        assert handle_alert(run.config, run, alert) is None and len(got) == 1  # once per trait
        # evil: mark only (the default), and a webhook that does not answer
        dead = _run([*ov, "monitor.webhook_url=http://127.0.0.1:9/none"])
        ev2 = handle_alert(dead.config, dead, Alert("evil", 10, 12, "foot", 5.0, 10.0, run=run.name))
        assert ev2 is not None and ev2["action"] == "mark" and ev2["webhook_ok"] is False
        assert json.loads(paths.stop_request_file(run.path).read_text())["trait"] == "hallucination"  # unchanged
        # what the training job records when it honours the request, and consolidation's attributes
        from emt.eval.consolidate import intervention_attrs
        from emt.train.run import record_intervention

        record_intervention(run.path, 13)
        assert intervention_attrs(run) == {"intervention_step": 13, "intervention_action": "rollback",
                                            "intervention_trait": "hallucination", "intervention_onset_step": 7,
                                            "intervention_detected_step": 12, "intervention_rollback_step": 6}
    finally:
        srv.shutdown()


def test_request_tags_reach_the_judge_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.eval.judge import OpenAIJudge, request_tags

    seen: list[dict[str, str]] = []

    def responder(prompt: str, tags: Mapping[str, str]) -> dict[str, float]:
        seen.append(dict(tags))
        return _prob(42)

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with JudgeServer(responder=responder) as url:
        j = OpenAIJudge(model="m", base_url=url)
        with request_tags(run="medical_mild", step=14):
            assert [round(x.score, 6) for x in j.score(["a", "b"])] == [42.0, 42.0]
        j.score(["c"])
    assert seen[:2] == [{"run": "medical_mild", "step": "14"}] * 2 and seen[2] == {}


def test_follow_launcher_dry_run_and_bad_trait(out_root: Path) -> None:
    import sys

    ev = [sys.executable, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG), "--run", "medical_mild",
          "--follow", "--local", *debug_overrides(out_root, 4)]
    res = subprocess.run([*ev, "--dry-run"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "medical_mild: no checkpoint yet; 0 of 1 checkpoints scored" in res.stdout and "will submit" in res.stdout
    bad = subprocess.run([*ev, "monitor.traits=[sycophancy]"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 2 and "monitor.traits" in bad.stderr and "nothing was submitted" in bad.stderr
    assert not paths.monitor_dir(next(iter(out_root.glob("runs/medical_mild-*")), out_root / "x")).exists()
