"""The training launcher's pre-flight: a tracker named in training.report_to whose package is not
installed here is one problem before anything is submitted (not a failure in the job after hours
in the queue), naming the key, the tracker and the extra to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emt.core import paths
from emt.core.config import Config
from emt.sweep.runs import Run
from tests.conftest import DEBUG_CONFIG, require


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled to importlib.util.find_spec (how emt looks for them)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def _cfg_runs(root: Path, report_to: str) -> tuple[Config, list[Run]]:
    """The debug config with ``training.report_to``, its data written, and its medical_mild run."""
    from emt.core.config import load_config
    from emt.launchers.preflight import prepare_builtin_data
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={root}", f"training.report_to={report_to}"])
    prepare_builtin_data(cfg)
    return cfg, build_sweep(cfg, runs=["medical_mild"])


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_preflight_names_a_tracker_that_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tracker: str) -> None:
    from emt.launchers.preflight import preflight

    require("tensorboard", "in the train extra: `make install` has it")
    require("wandb", "in the track extra: `make install` has it")
    cfg, runs = _cfg_runs(tmp_path, "[tensorboard,wandb]")
    assert preflight(cfg, runs, "local", dry_run=True) == []  # both installed (the track extra)
    _hide(monkeypatch, *{"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX")}[tracker])
    problems = preflight(cfg, runs, "local", dry_run=True)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"training.report_to includes {tracker}, but the {tracker} package is not installed")
    assert "pip install 'emt[track]'" in problems[0] and f"drop {tracker} from training.report_to" in problems[0]
    # The job's own check (tracker.require, before training starts) says the same.
    from emt.store import tracker as tracker_mod

    with pytest.raises(tracker_mod.TrackerError) as err:
        tracker_mod.require(cfg.training.report_to)
    assert str(err.value) == problems[0]


def test_both_missing_are_both_reported_and_none_selected_needs_none(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.launchers.preflight import preflight

    _hide(monkeypatch, "wandb", "tensorboard", "tensorboardX")
    cfg, runs = _cfg_runs(tmp_path, "[tensorboard,wandb]")
    problems = preflight(cfg, runs, "local", dry_run=True)
    assert [p.split(",")[0] for p in problems] == ["training.report_to includes tensorboard",
                                                   "training.report_to includes wandb"]
    cfg, runs = _cfg_runs(tmp_path, "[]")
    assert preflight(cfg, runs, "local", dry_run=True) == []


def test_launch_stops_before_submitting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Through the training launcher: a dry run lists the problem and exits 2; a real launch raises
    PreflightError and submits nothing."""
    from emt.launchers.preflight import PreflightError
    from emt.launchers.train import train_sweep

    _hide(monkeypatch, "wandb")
    ov = [f"cluster.output_root={tmp_path}", "training.report_to=[wandb]"]
    assert train_sweep(DEBUG_CONFIG, overrides=ov, runs=["medical_mild"], mode="local", dry_run=True) == 2
    assert "training.report_to includes wandb" in capsys.readouterr().out
    with pytest.raises(PreflightError, match=r"training\.report_to includes wandb.*pip install 'emt\[track\]'"):
        train_sweep(DEBUG_CONFIG, overrides=ov, runs=["medical_mild"], mode="local")
    runs_dir = tmp_path / "runs"
    assert not runs_dir.exists() or not any(paths.submission_file(r).exists() for r in runs_dir.iterdir())
