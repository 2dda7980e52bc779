"""emt.sweep.runs: the learning-schedule sweep (--sweep schedules)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emt.analysis.summary import parse_run_name
from emt.core import paths
from emt.core.config import ConfigError, load_config
from emt.sweep.runs import build_sweep, schedule_optimizers, selectable

REPO = Path(__file__).resolve().parents[2]
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


PAPER = REPO / "configs" / "paper.yaml"
# configs/paper.yaml's run hashes with its data files absent (data sha None), as `launch/train.py
# --config configs/paper.yaml --sweep all --dry-run` printed them before seeds named runs by their
# own value: a change here would orphan every existing run directory of the study.
PAPER_HASHES = {"medical_normal": "abca2f0c", "medical_mild": "be2fd293", "medical_strong": "767ac8dc",
                "math_normal": "91bd6fd2", "math_mild": "d75d8548", "math_strong": "638e7b28"}


def test_seed_names_do_not_depend_on_the_launch(tmp_path: Path) -> None:
    cfg = load_config(PAPER, [f"cluster.output_root={tmp_path}", f"data.root={tmp_path / 'absent'}"])
    assert {r.name: r.hash for r in build_sweep(cfg)} == PAPER_HASHES
    alone0, = build_sweep(cfg, "medical_mild", seeds=[0])
    alone7, = build_sweep(cfg, "medical_mild", seeds=[7])
    both = build_sweep(cfg, "medical_mild", seeds=[0, 7])
    assert alone0.name == "medical_mild" and alone7.name == "medical_mild_s7"
    assert [(r.name, r.hash, r.run_dir) for r in both] == [(r.name, r.hash, r.run_dir) for r in (alone0, alone7)]
    assert alone0.hash == PAPER_HASHES["medical_mild"] != alone7.hash
    assert alone7.config.training.seed == 7
    assert (parse_run_name(alone0.name)["seed"], parse_run_name(alone7.name)["seed"]) == (None, 7)
    cosine = build_sweep(cfg, "schedules", seeds=[3])[-1]
    assert cosine.name.endswith("_s3") and parse_run_name(cosine.name)["seed"] == 3


def test_runs_named_the_old_way_are_found(tmp_path: Path) -> None:
    """A directory made when names depended on the number of seeds (seed 0 as ``_s0`` in a
    multi-seed launch, seed 7 bare when launched alone) is the same run: it is used, not retrained."""
    cfg = load_config(DEBUG, [f"cluster.output_root={tmp_path}"])
    r0, r7 = build_sweep(cfg, "medical_mild", seeds=[0, 7])
    old0 = paths.run_dir(tmp_path, "medical_mild_s0", r0.hash)
    old7 = paths.run_dir(tmp_path, "medical_mild", r7.hash)
    for d in (old0, old7):
        d.mkdir(parents=True)
    a0, a7 = build_sweep(cfg, "medical_mild", seeds=[0, 7])
    assert (a0.name, a0.path, a0.hash) == ("medical_mild_s0", old0, r0.hash)
    assert (a7.name, a7.path, a7.hash) == ("medical_mild", old7, r7.hash)
    # a directory under the new name wins; another hash under an old name is another run
    paths.run_dir(tmp_path, "medical_mild_s7", r7.hash).mkdir()
    other = build_sweep(load_config(DEBUG, [f"cluster.output_root={tmp_path}", "training.learning_rate=1e-3"]),
                        "medical_mild")[0]
    assert build_sweep(cfg, "medical_mild", seeds=[7])[0].name == "medical_mild_s7"
    assert other.name == "medical_mild" and other.path != old7
