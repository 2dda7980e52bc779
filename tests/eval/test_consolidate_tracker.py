"""Consolidation and the monitor's partial consolidation log every checkpoint's trait scores,
coherence, NaN share and judge cost to TensorBoard at the training step; read back offline with
TensorBoard's own reader. Real judge calls (the OpenAI-format fake server, through the judge
cache) make the cost; no model runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from emt.core import atomic, paths
from tests.conftest import DEBUG_CONFIG, require
from tests.fakes.judge_server import JudgeServer
from tests.fakes.tensorboard_events import event_files, read_events

require("tensorboard", "in the train extra: `make install` has it")

STEPS = [0, 2, 4, 6]


def _run(root: Path, url: str, *extra: str) -> Any:
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep

    judges = json.dumps([{"backend": "openai", "model": "gpt-4.1-mini", "base_url": url}])
    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={root}", "eval.questions_per_trait=2",
                                     "eval.samples_per_question=2", "activations.layers=[]",
                                     f"judge.judges={judges}", "training.report_to=[tensorboard]", *extra])
    return build_sweep(cfg, "all", runs=["medical_mild"])[0]


def _score(run: Any, ehash: str, steps: list[int]) -> Any:
    """Judge made-up answers of ``steps`` with the run's real judge (cache on) and write their
    result files as an eval task does; the judge (its usage is the cost to expect)."""
    from emt.eval.plan import eval_root, load_traits
    from emt.eval.task import make_judges, score_checkpoint
    from emt.store import results

    traits = load_traits(run.config)
    [judge] = make_judges(run.config)
    convs = [(t, q) for t in traits for q in t.questions]
    for step in steps:
        answers = [[f"answer {k} at step {step} to {q.id}" for k in range(2)] for _, q in convs]
        tp = [t.judge_prompt_for(q, a) for (t, q), ans in zip(convs, answers) for a in ans]
        cp = [t.coherence_prompt_for(q, a) for (t, q), ans in zip(convs, answers) for a in ans]
        result, _ = score_checkpoint(step, traits, answers, [judge], tp, cp)
        assert not result.get("judge_failed")
        results.write(paths.result_file(eval_root(run, ehash), step), result)
    return judge


def _checkpoints(run: Any) -> None:
    """Complete checkpoint markers (with their losses), as training leaves them."""
    for s in STEPS[1:]:
        atomic.write_json(paths.checkpoint_marker(paths.checkpoint_dir(run.path, s)),
                          {"step": s, "train_loss": 2.0 - s / 10, "heldout_loss": 2.1 - s / 10})


def test_monitor_then_full_consolidation_log_each_checkpoint_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.eval.consolidate import consolidate_run
    from emt.eval.monitor import consolidate_partial
    from emt.eval.plan import eval_hash
    from emt.store import tracker
    from emt.store.scores import load

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as url:  # the hash responder: realistic scores, some refusals (NaN)
        run = _run(tmp_path, url)
        ehash = eval_hash(run.config)
        _checkpoints(run)
        judge = _score(run, ehash, STEPS[:2])
        cost_early = judge.usage()["est_cost_usd"]
        # The monitor's round: the results present so far, consolidated and logged.
        consolidate_partial(run, ehash)
        logdir = paths.tracker_eval_dir(run.path)
        assert [s for s, _ in read_events(logdir)["eval/evil/score"]] == STEPS[:2]
        judge = _score(run, ehash, STEPS[2:])
        cost_late = judge.usage()["est_cost_usd"]
    # The full consolidation after the eval array, then a rerun that finds it up to date.
    out = consolidate_run(run, ehash)
    assert out["trackers"] == ["tensorboard"] and not out["partial"]
    again = consolidate_run(run, ehash)
    assert again["skipped"] and again["trackers"] == []
    assert len(event_files(logdir)) == 1

    ev = read_events(logdir)
    d = load(paths.scores_file(run.path), strings=False)
    expected = tracker.checkpoint_scalars(d)
    for t in ("evil", "hallucination"):
        for k in ("coherence", "nan_share"):
            tag = f"eval/{t}/{k}"
            assert [s for s, _ in ev[tag]] == STEPS, tag  # every checkpoint, once, at its training step
            assert [v for _, v in ev[tag]] == pytest.approx([expected[s][tag] for s in STEPS], rel=1e-6)
    nan_shares = [v for t in ("evil", "hallucination") for _, v in ev[f"eval/{t}/nan_share"]]
    assert all(0 <= v <= 1 for v in nan_shares)
    # The judge's cost per checkpoint adds up to what the judge itself accounted for its calls.
    cost = dict(ev["eval/judge_cost_usd"])
    assert sorted(cost) == STEPS and all(c > 0 for c in cost.values())
    assert sum(cost.values()) == pytest.approx(cost_early + cost_late, rel=1e-5)
    assert dict(ev["eval/judge_cost_usd/gpt-4.1-mini"]) == pytest.approx(cost, rel=1e-6)
    assert not (paths.tracker_dir(run.path) / "train").exists()  # training's dir is the trainer's own


def test_tracker_failure_never_fails_consolidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from emt.eval.consolidate import consolidate_run
    from emt.eval.plan import eval_hash
    from emt.store import tracker

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as url:
        run = _run(tmp_path, url, "judge.cache=false")
        ehash = eval_hash(run.config)
        _score(run, ehash, [0])

    def broken(*a: Any, **k: Any) -> None:
        raise tracker.TrackerError("tensorboard is not installed: pip install tensorboard")

    monkeypatch.setattr(tracker, "write_tensorboard", broken)
    out = consolidate_run(run, ehash, steps=[0])
    assert out["trackers"] == [] and paths.scores_file(run.path).is_file()
    assert "could not log to tensorboard" in caplog.text and "pip install tensorboard" in caplog.text
    # The next consolidation catches up, although scores.h5 itself is up to date; no cache: no cost.
    monkeypatch.undo()
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    out = consolidate_run(run, ehash, steps=[0])
    assert out["skipped"] and out["trackers"] == ["tensorboard"]
    ev = read_events(paths.tracker_eval_dir(run.path))
    assert [s for s, _ in ev["eval/evil/coherence"]] == [0] and "eval/judge_cost_usd" not in ev


def test_tiny_training_run_and_its_eval_share_one_tensorboard(out_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (tiny) training run with training.report_to=[tensorboard] and its real evaluation:
    the trainer's losses and the consolidation's eval scalars land under the run's tracker dir,
    at the same training steps."""
    import subprocess

    from emt.eval.consolidate import consolidate_run
    from emt.eval.plan import EvalTask, eval_hash, targets
    from emt.eval.task import run_eval_task
    from emt.launchers.preflight import prepare_builtin_data
    from emt.sweep.runs import build_sweep
    from tests.conftest import REPO, debug_overrides, launch_cmd

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as url:
        ov = [*debug_overrides(out_root, 4), "training.report_to=[tensorboard]"]
        res = subprocess.run(launch_cmd("--local", "--runs", "medical_mild", *ov), capture_output=True, text=True,
                             timeout=900, cwd=REPO)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        # ov[0] is the output root, which _run sets; the eval generates with transformers (quick to start)
        cfg = _run(out_root, url, *ov[1:], "eval.backend=hf", "eval.max_new_tokens=8").config
        prepare_builtin_data(cfg)  # as the launcher did: the run's hash covers its data file
        run = build_sweep(cfg, "all", runs=["medical_mild"])[0]
        assert run.path.is_dir() and targets(run) == [0, 2, 4]
        ehash = eval_hash(run.config)
        run_eval_task(EvalTask(run, (0, 2, 4), 0, ehash))  # the tiny model answers, the judge scores
    assert consolidate_run(run, ehash)["trackers"] == ["tensorboard"]
    train = read_events(paths.tracker_train_dir(run.path))
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(train)  # the trainer's own callback
    assert [s for s, _ in train["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in train["eval/loss"]] == [0, 2, 4]  # held-out loss: the base model's, then each checkpoint's
    ev = read_events(paths.tracker_eval_dir(run.path))
    assert [s for s, _ in ev["eval/evil/coherence"]] == [0, 2, 4]  # the same steps as the trainer's
    assert [s for s, _ in ev["eval/judge_cost_usd"]] == [0, 2, 4]
