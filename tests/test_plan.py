"""emt.plan: the dry-run's arithmetic matches the Trainer's, and estimates are sane."""

from __future__ import annotations

import dataclasses

from conftest import DEBUG_CONFIG, REPO

from emt.config import load_config
from emt.plan import Arch, KNOWN_ARCHS, checkpoints_for, format_plan, plan_runs, steps_for
from emt.sweeps import build_sweep


def test_steps_follow_trainer_arithmetic() -> None:
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert steps_for(8987, cfg) == 562 and checkpoints_for(562, 2) == 281
    assert steps_for(17, cfg) == 2  # ceil(ceil(17/2)/8)
    capped = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, max_steps=7))
    assert steps_for(8987, capped) == 7 and checkpoints_for(7, 2) == 4  # the last step is saved too
    twice = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, epochs=2.0))
    assert steps_for(8987, twice) == 1124


def test_qwen7b_shapes() -> None:
    arch = Arch(*KNOWN_ARCHS["qwen/qwen2.5-7b"])
    assert 7.5e9 < arch.params() < 7.7e9  # Qwen2.5-7B has 7.61 B parameters
    lora = arch.lora_params(32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert 80e6 < lora < 81e6  # r=32 on every linear layer of 28 blocks


def test_plan_for_debug_sweep(tmp_path) -> None:
    from emt.pipeline import prepare_builtin_data

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"])
    prepare_builtin_data(cfg)
    runs = build_sweep(cfg)
    rows = plan_runs(cfg, runs)
    assert [r.run.name for r in rows] == [r.name for r in runs]
    assert all((r.examples, r.train, r.heldout, r.steps, r.checkpoints) == (300, 270, 30, 34, 17) for r in rows)
    assert all(r.state == "missing" and r.examples_source == "file" for r in rows)
    text = format_plan(cfg, rows, [r.name for r in runs])
    assert "Would submit 6 job(s)" in text and "medical_normal" in text
    small = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, disk_budget_gb=1e-6))
    assert "exceeds cluster.disk_budget_gb" in format_plan(small, plan_runs(small, runs), [])
