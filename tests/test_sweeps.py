"""emt.sweeps: the learning-schedule sweep (--sweep schedules)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emt.analysis.summary import parse_run_name
from emt.config import ConfigError, load_config
from emt.sweeps import build_sweep, schedule_optimizers, selectable

REPO = Path(__file__).resolve().parent.parent
DEBUG = REPO / "configs" / "debug.yaml"


def test_schedule_sweep_runs(tmp_path: Path) -> None:
    cfg = load_config(DEBUG, [f"cluster.output_root={tmp_path}", "schedules.learning_rates=[1e-4,5e-4]",
                              "schedules.optimizers=[adamw_torch]"])
    assert "schedules" in selectable(cfg)
    runs = build_sweep(cfg, "schedules")
    assert len(runs) == 6  # 3 schedulers x 2 learning rates x 1 optimizer
    by = {r.name: r for r in runs}
    # the configured schedule (linear, 5e-4, adamw_torch in debug.yaml) is the plain run, not trained twice
    assert by["medical_strong"].hash == build_sweep(cfg, "medical_strong")[0].hash
    c = by["medical_strong_cosine-lr0.0001-adamw-torch"].config.training
    assert (c.lr_scheduler, c.learning_rate, c.optimizer) == ("cosine", 1e-4, "adamw_torch")
    assert len({r.hash for r in runs}) == 6 and len({r.run_dir for r in runs}) == 6
    for r in runs:
        p = parse_run_name(r.name)
        assert (p["domain"], p["level"]) == ("medical", "strong")
    seeds = build_sweep(cfg, "schedules", seeds=[0, 1])
    assert len(seeds) == 12 and parse_run_name(seeds[-1].name)["seed"] == 1


def test_lion_where_installed(tmp_path: Path) -> None:
    cfg = load_config(DEBUG, [f"cluster.output_root={tmp_path}"])
    opts, notes = schedule_optimizers(cfg)
    if importlib.util.find_spec("bitsandbytes") is None:
        assert opts == ["adamw_torch"] and "bitsandbytes" in notes[0]
    else:
        assert opts == ["adamw_torch", "lion_32bit"] and not notes


def test_schedule_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(DEBUG, [f"cluster.output_root={tmp_path}", "schedules.domain=law", "schedules.lr_schedulers=[zigzag]",
                            "schedules.learning_rates=[-1]"])
    msg = str(e.value)
    assert "schedules.domain" in msg and "zigzag" in msg and "schedules.learning_rates" in msg
