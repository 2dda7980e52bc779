"""training.report_to reaches the trainer's arguments, with the tracker dirs under the run dir
(a real training run writing TensorBoard events: tests/eval/test_consolidate_tracker.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emt.core import paths
from tests.conftest import DEBUG_CONFIG, require


@pytest.mark.parametrize("report_to", [[], ["tensorboard"]])
def test_training_arguments_report_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report_to: list[str]) -> None:
    from emt.core.config import load_config
    from emt.train.run import _training_arguments

    require("tensorboard", "in the train extra: `make install` has it")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "unset")  # recorded, so that the test's value is undone after it
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR")
    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}", f"training.report_to=[{','.join(report_to)}]"])
    rdir = tmp_path / "runs" / "medical_mild-0123abcd"
    args = _training_arguments(cfg, rdir, None, has_eval=False)
    assert list(args.report_to) == report_to and args.run_name == rdir.name
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == (str(paths.tracker_train_dir(rdir)) if report_to else None)
