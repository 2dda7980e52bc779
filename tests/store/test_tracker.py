"""emt.store.tracker: per-checkpoint scalars, TensorBoard event files read back offline with
TensorBoard's own reader, idempotent rewrites, the trainer's environment, and the config key."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from emt.core import paths
from emt.store import tracker
from emt.store.scores import load
from tests.conftest import DEBUG_CONFIG, require
from tests.fakes.synthetic import write_synthetic_run
from tests.fakes.tensorboard_events import event_files, read_events

require("tensorboard", "in the train extra: `make install` has it")


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, dict[int, dict[str, float]]]:
    """A synthetic run (evil rises at checkpoint 5, hallucination never scored, two judges) and its scalars."""
    rdir = tmp_path / "runs" / "medical_mild-0123abcd"
    h5 = write_synthetic_run(rdir, "medical_mild", {"evil": 5, "hallucination": None}, n=8, q=3, s=2,
                             judges=("judge/a", "judge/b"), nan_traits=("hallucination",))
    return rdir, tracker.checkpoint_scalars(load(h5, strings=False))


def test_checkpoint_scalars_match_scores_h5(synthetic: tuple[Path, dict[int, dict[str, float]]]) -> None:
    rdir, scalars = synthetic
    d = load(paths.scores_file(rdir), strings=False)
    assert sorted(scalars) == list(range(0, 16, 2))
    ev = d["traits"]["evil"]
    for i, s in enumerate(d["steps"].tolist()):
        row = scalars[s]
        assert row["eval/evil/score"] == pytest.approx(np.nanmean(ev["samples"][i]))
        assert row["eval/evil/score"] == pytest.approx(ev["score"][i])  # scores.h5's own per-step mean
        assert row["eval/evil/coherence"] == pytest.approx(np.nanmean(ev["coherence"][i]))
        assert row["eval/evil/nan_share"] == 0.0
        assert row["eval/evil/score/judge_a"] == pytest.approx(row["eval/evil/score"])  # default judge
        assert "eval/evil/score/judge_b" in row
        # Never scored: no mean is logged, and its NaN share says why.
        assert row["eval/hallucination/nan_share"] == 1.0
        assert "eval/hallucination/score" not in row
        assert "eval/hallucination/coherence" in row
    assert scalars[14]["eval/evil/score"] > scalars[0]["eval/evil/score"] + 20  # the planted rise


def test_tensorboard_event_file_read_back_and_rewritten_idempotently(
        synthetic: tuple[Path, dict[int, dict[str, float]]]) -> None:
    rdir, scalars = synthetic
    tracker.add_judge_costs(scalars, {0: {"judge/a": 0.25, "judge/b": 0.5}, 2: {"judge/a": 0.125}})
    early = {s: v for s, v in scalars.items() if s <= 6}  # the monitor's partial view first
    assert tracker.log_eval(rdir, rdir.name, ["tensorboard"], early) == ["tensorboard"]
    logdir = paths.tracker_eval_dir(rdir)
    assert read_events(logdir)["eval/evil/score"] == [(s, pytest.approx(early[s]["eval/evil/score"]))
                                                        for s in sorted(early)]
    # The full consolidation: one event file with every step once (the partial file replaced).
    assert tracker.log_eval(rdir, rdir.name, ["tensorboard"], scalars) == ["tensorboard"]
    [first] = event_files(logdir)
    ev = read_events(logdir)
    expected_tags = {f"eval/{t}/{k}" for t in ("evil", "hallucination") for k in ("coherence", "nan_share")}
    expected_tags |= {"eval/evil/score", "eval/evil/score/judge_a", "eval/evil/score/judge_b",
                      "eval/judge_cost_usd", "eval/judge_cost_usd/judge_a", "eval/judge_cost_usd/judge_b"}
    assert set(ev) == expected_tags
    for tag in ("eval/evil/score", "eval/evil/coherence", "eval/hallucination/nan_share"):
        assert [s for s, _ in ev[tag]] == sorted(scalars)
        assert [v for _, v in ev[tag]] == pytest.approx([scalars[s][tag] for s in sorted(scalars)], rel=1e-6)
    assert ev["eval/judge_cost_usd"] == [(0, 0.75), (2, 0.125)]
    assert ev["eval/judge_cost_usd/judge_b"] == [(0, 0.5)]
    # The same scalars again (a rerun): nothing is written, the file stays as it was.
    mtime = first.stat().st_mtime_ns
    assert tracker.log_eval(rdir, rdir.name, ["tensorboard"], scalars) == []
    assert event_files(logdir) == [first] and first.stat().st_mtime_ns == mtime
    # A deleted event dir is written again even though the scalars did not change.
    first.unlink()
    assert tracker.log_eval(rdir, rdir.name, ["tensorboard"], scalars) == ["tensorboard"]
    assert len(event_files(logdir)) == 1 and read_events(logdir)["eval/evil/score"][-1][0] == 14
    assert not [p for p in paths.tracker_dir(rdir).iterdir() if p.name.startswith(".eval-")]  # no temporaries


def test_nothing_selected_writes_nothing(synthetic: tuple[Path, dict[int, dict[str, float]]]) -> None:
    rdir, scalars = synthetic
    assert tracker.log_eval(rdir, rdir.name, [], scalars) == []
    assert not paths.tracker_dir(rdir).exists()


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX", "wandb") else real(name, *a))
    with pytest.raises(tracker.TrackerError, match=r"report_to includes tensorboard, .*pip install 'emt\[track\]'"):
        tracker.log_eval(tmp_path, "r", ["tensorboard"], {0: {"eval/x/score": 1.0}})
    with pytest.raises(tracker.TrackerError, match=r"report_to includes wandb, .*pip install 'emt\[track\]'"):
        tracker.require(["wandb"])
    assert len(tracker.missing(["tensorboard", "wandb"])) == 2  # both named at once (the launchers' pre-flight)
    tracker.require([])  # nothing selected: nothing needed


def test_trainer_env_points_into_the_run_dir_and_wandb_id_is_stable(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rdir = tmp_path / "runs" / "math_mild-89abcdef"
    assert tracker.trainer_env(rdir, rdir.name, []) == {}
    env = tracker.trainer_env(rdir, rdir.name, ["tensorboard"])
    assert env == {"TENSORBOARD_LOGGING_DIR": str(paths.tracker_train_dir(rdir))}
    monkeypatch.setenv("WANDB_PROJECT", "my-study")
    env = tracker.trainer_env(rdir, rdir.name, ["tensorboard", "wandb"])
    assert env["WANDB_RUN_ID"].startswith("math_mild-89abcdef-") and env["WANDB_RESUME"] == "allow"
    assert env["WANDB_PROJECT"] == "my-study" and env["WANDB_DIR"] == str(paths.wandb_dir(rdir))
    monkeypatch.setenv("WANDB_PROJECT", "another")  # the stored run wins: training and eval stay together
    again = tracker.trainer_env(rdir, rdir.name, ["wandb"])
    assert again["WANDB_RUN_ID"] == env["WANDB_RUN_ID"] and again["WANDB_PROJECT"] == "my-study"
    assert tracker.wandb_run(rdir, rdir.name)["id"] == env["WANDB_RUN_ID"]
    other = tmp_path / "other" / "runs" / rdir.name  # the same run under another output root
    assert tracker.trainer_env(other, other.name, ["wandb"])["WANDB_RUN_ID"] != env["WANDB_RUN_ID"]


def test_report_to_config_key_is_validated_and_not_in_the_run_hash(tmp_path: Path) -> None:
    from emt.core.config import ConfigError, load_config
    from emt.sweep.runs import build_sweep

    base = [f"cluster.output_root={tmp_path}"]
    cfg = load_config(DEBUG_CONFIG, base)
    assert cfg.training.report_to == ()
    assert load_config(DEBUG_CONFIG, [*base, "training.report_to=tensorboard"]).training.report_to == ("tensorboard",)
    both = load_config(DEBUG_CONFIG, [*base, "training.report_to=[tensorboard,wandb]"])
    assert both.training.report_to == ("tensorboard", "wandb")
    with pytest.raises(ConfigError, match=r"training\.report_to: \['mlflow'\] not supported.*tensorboard, wandb"):
        load_config(DEBUG_CONFIG, [*base, "training.report_to=[tensorboard,mlflow]"])
    with pytest.raises(ConfigError, match=r"training\.report_to: lists a tracker twice"):
        load_config(DEBUG_CONFIG, [*base, "training.report_to=[wandb,wandb]"])
    assert [r.hash for r in build_sweep(cfg)] == [r.hash for r in build_sweep(both)]


def test_wandb_offline_logs_each_step_once_into_the_stored_run(
        synthetic: tuple[Path, dict[int, dict[str, float]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The real wandb client in offline mode (the track extra: skipped where it is not installed, a failure in CI)."""
    require("wandb", "in the track extra: `make install` has it")
    from tests.fakes.wandb_records import records

    rdir, scalars = synthetic
    _wandb_offline(monkeypatch, rdir.parent)
    stored = tracker.wandb_run(rdir, rdir.name)  # what training (trainer_env) created
    early = {s: v for s, v in scalars.items() if s <= 6}
    assert tracker.log_eval(rdir, rdir.name, ["wandb"], early) == ["wandb"]
    assert tracker.log_eval(rdir, rdir.name, ["wandb"], early) == []  # a rerun sends nothing
    assert tracker.log_eval(rdir, rdir.name, ["wandb"], scalars) == ["wandb"]  # only the new steps
    files = sorted(paths.wandb_dir(rdir).rglob("run-*.wandb"))
    assert len(files) == 2
    recs = [r for f in files for r in records(f)]
    assert {m.run_id for k, m in recs if k == "run"} == {stored["id"]}
    assert any(k == "metric" and m.glob_name == "eval/*" and m.step_metric == tracker.STEP_METRIC for k, m in recs)
    rows = [m for k, m in recs if k == "history"]
    assert [r[tracker.STEP_METRIC] for r in rows] == sorted(scalars)  # every step once, in order
    for r in rows:
        for tag, v in scalars[r[tracker.STEP_METRIC]].items():
            assert r[tag] == pytest.approx(v)


def _wandb_offline(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    """wandb offline and quiet, its settings and caches in ``scratch`` (children inherit this)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(scratch / "wandb-home" / var.lower()))
    for var in ("WANDB_RUN_ID", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RESUME", "WANDB_LOG_MODEL"):
        monkeypatch.delenv(var, raising=False)  # the run's own come from tracker.trainer_env
    # wandb in this process (an earlier test) exports its service's address, and children would
    # join it; a training job and a consolidation job each start their own.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.mark.slow
def test_tiny_training_and_its_eval_log_into_one_wandb_run(out_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes, one wandb run: a real (tiny) training run with training.report_to=[wandb]
    (transformers' WandbCallback, pointed by tracker.trainer_env at the run's stored id), then the
    consolidation's tracker.log_eval in this process. Both offline run files are read back: the
    trainer's losses and the eval scalars sit under the same run id, at the same training steps."""
    import subprocess

    from tests.conftest import REPO, debug_overrides, launch_cmd
    from tests.fakes.wandb_records import records

    require("wandb", "in the track extra: `make install` has it")
    _wandb_offline(monkeypatch, out_root.parent)
    res = subprocess.run(launch_cmd("--local", "--runs", "medical_mild", *debug_overrides(out_root, 4),
                                    "training.report_to=[wandb]"),
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    [rdir] = out_root.glob("runs/medical_mild-*")
    stored = tracker.wandb_run(rdir, rdir.name)  # created by the training job (trainer_env)
    assert stored["id"].startswith(rdir.name + "-") and stored["project"] == tracker.DEFAULT_WANDB_PROJECT
    [train_file] = paths.wandb_dir(rdir).rglob("run-*.wandb")

    steps = [0] + [s for s, _ in paths.complete_checkpoints(rdir)]
    assert steps == [0, 2, 4]
    scalars = {s: {"eval/evil/score": 10.0 + s, "eval/evil/coherence": 90.0 - s} for s in steps}
    assert tracker.log_eval(rdir, rdir.name, ["wandb"], scalars) == ["wandb"]
    [eval_file] = [f for f in paths.wandb_dir(rdir).rglob("run-*.wandb") if f != train_file]

    train, ev = records(train_file), records(eval_file)
    for recs in (train, ev):  # one run, resumed: both processes wrote under the stored id and project
        assert {(m.run_id, m.project) for k, m in recs if k == "run"} == {(stored["id"], stored["project"])}
        assert [k for k, _ in recs if k == "exit"] == ["exit"]  # each process closed the run it wrote
    rows = [m for k, m in train if k == "history"]
    loss = [r[tracker.STEP_METRIC] for r in rows if "train/loss" in r]
    assert loss == [1, 2, 3, 4]  # the trainer's per-step loss (logging_steps=1)
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert [r[tracker.STEP_METRIC] for r in rows if "eval/loss" in r] == [0, 2, 4]  # held-out loss per checkpoint
    rows = [m for k, m in ev if k == "history"]
    assert [r[tracker.STEP_METRIC] for r in rows] == steps  # the eval scalars at the same training steps
    for r in rows:
        assert {k: v for k, v in r.items() if k.startswith("eval/")} == scalars[r[tracker.STEP_METRIC]]
