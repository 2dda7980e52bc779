"""emt.plan: the dry-run's arithmetic matches the Trainer's, and estimates are sane."""

from __future__ import annotations

import dataclasses

import pytest

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


def test_world_size_divides_the_steps() -> None:
    cfg = load_config(REPO / "configs" / "paper.yaml")
    four = load_config(REPO / "configs" / "paper.yaml", ["cluster.train.gpus=4", "cluster.train.cpus=16"])
    assert steps_for(8987, cfg) == 562
    assert steps_for(8987, four) == 141  # ceil(ceil(ceil(8987/2)/4)/8): each process takes a quarter


def test_full_finetuning_disk_warning_with_numbers_and_remedies() -> None:
    import re

    from emt.plan import checkpoint_bytes, model_arch

    ov = ["training.method=full", "training.deepspeed=zero3", "cluster.disk_budget_gb=2000"]
    cfg = load_config(REPO / "configs" / "paper.yaml", ov)
    runs = build_sweep(cfg)
    rows = plan_runs(cfg, runs)
    arch, _ = model_arch(cfg)
    per_ckpt, resume = checkpoint_bytes(cfg, arch)
    assert 15.0e9 < per_ckpt < 15.5e9  # 7.6 B parameters x 2 B (bf16), no optimizer state
    assert resume == 6 * per_ckpt
    medical = rows[0]
    assert medical.checkpoints == 281
    assert medical.disk_gb == pytest.approx((281 * per_ckpt + resume) / 1e9)
    text = format_plan(cfg, rows, [])
    warning = next(line for line in text.splitlines() if line.startswith("WARNING"))
    total = sum(r.disk_gb for r in rows)
    assert f"~{total:,.1f} GB of checkpoints exceeds cluster.disk_budget_gb=2000" in warning
    assert "1473 kept checkpoint(s) x 15.23 GB (full model)" in warning
    keep = int(re.search(r"checkpointing.keep_every=(\d+) keeps", text).group(1))
    assert "evaluation on the fly" in text and "follow mode" in text
    # paper.yaml writes resume state every 10 steps; at every checkpoint the plan says what that costs.
    every = load_config(REPO / "configs" / "paper.yaml", ov + ["checkpointing.resume_state_every=null"])
    note = format_plan(every, plan_runs(every, build_sweep(every)), [])
    assert "NOTE: resume state (91.39 GB) is written at all 1473 checkpoints, 6x the checkpoint" in note
    assert "checkpointing.resume_state_every=N" in note and "NOTE" not in text

    # The suggested keep_every fits the budget; the next smaller one would not.
    fitted = load_config(REPO / "configs" / "paper.yaml", ov + [f"checkpointing.keep_every={keep}"])
    fitted_rows = plan_runs(fitted, build_sweep(fitted))
    assert sum(r.disk_gb for r in fitted_rows) <= 2000
    assert fitted_rows[0].checkpoints == 281  # every 2 steps is still saved (and can be scored)
    assert "WARNING" not in format_plan(fitted, fitted_rows, [])
    tighter = load_config(REPO / "configs" / "paper.yaml", ov + [f"checkpointing.keep_every={keep - 2}"])
    assert sum(r.disk_gb for r in plan_runs(tighter, build_sweep(tighter))) > 2000

    # LoRA checkpoints of the same sweep fit easily.
    lora = load_config(REPO / "configs" / "paper.yaml", ["cluster.disk_budget_gb=2000"])
    assert "WARNING" not in format_plan(lora, plan_runs(lora, build_sweep(lora)), [])
