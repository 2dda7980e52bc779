"""emt.launchers.plan: the dry-run's arithmetic matches the Trainer's, and estimates are sane."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import DEBUG_CONFIG, REPO

from emt.core import paths
from emt.core.config import load_config
from emt.launchers.plan import Arch, KNOWN_ARCHS, checkpoints_for, format_plan, plan_runs, steps_for
from emt.sweep.runs import build_sweep


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
    from emt.launchers.preflight import prepare_builtin_data

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

    from emt.launchers.plan import checkpoint_bytes, model_arch

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


def _profile(tmp_path, **over) -> str:
    """A profile in bench/gpu_check.py's format (a test fixture: figures written by hand)."""
    import json

    prof = {"schema": 1, "source": "bench/gpu_check.py", "date": "2026-12-02T00:00:00Z", "mode": "gpu",
            "device": "NVIDIA H100 80GB HBM3", "peak_tflops_measured": 780.0, "peak_tflops_datasheet": 989.4,
            "train": {"lora": {"achieved_tflops": 100.0}, "full:zero3": {"achieved_tflops": 50.0}},
            "eval": {"backend": "hf", "s_per_checkpoint": 30.0, "capture_s": 2.0, "sequences": 60,
                     "max_new_tokens": 1000, "batch_size": 64}}
    prof.update(over)
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps({"parts": {}, "profile": prof}))
    return str(path)


def test_measured_profile_replaces_the_assumed_rate(tmp_path) -> None:
    from emt.core.profiles import load_profile
    from emt.launchers.plan import checkpoint_bytes, eval_seconds, model_arch

    path = _profile(tmp_path)
    assumed = load_config(REPO / "configs" / "paper.yaml", ["cluster.gpu_tflops=250"])
    measured = load_config(REPO / "configs" / "paper.yaml", ["cluster.gpu_tflops=250", f"cluster.profile={path}"])
    a_rows, m_rows = plan_runs(assumed, build_sweep(assumed)), plan_runs(measured, build_sweep(measured))
    arch, _ = model_arch(measured)
    # Same writes, compute at 100 instead of 250 TFLOP/s: the compute part is 2.5x longer.
    write_h = a_rows[0].gpu_hours - _compute_hours(a_rows[0], arch, measured, 250)
    assert m_rows[0].gpu_hours == pytest.approx(write_h + _compute_hours(m_rows[0], arch, measured, 100.0))
    text = format_plan(measured, m_rows, [])
    assert f"Training rate: measured 100 TFLOP/s (lora) from profile {path} (NVIDIA H100 80GB HBM3, 2026-12-02" in text
    assert "assumed cluster.gpu_tflops=250 TFLOP/s (no cluster.profile" in format_plan(assumed, a_rows, [])

    # Evaluation: 40 questions x 10 samples = 400 answers = 7 batches of 64 against the measured 1,
    # same answer length; paper.yaml captures activations (2 s per 60 answers).
    s, src = eval_seconds(measured, load_profile(path))
    assert s == pytest.approx(30.0 * 7 + 2.0 * 400 / 60)
    assert "transformers backend measured 30 s for 60 answers x 1000 tokens" in src and "upper bound" in src
    assert m_rows[0].eval_gpu_hours == pytest.approx((m_rows[0].checkpoints + 1) * s / 3600)
    assert a_rows[0].eval_gpu_hours == pytest.approx((a_rows[0].checkpoints + 1) * assumed.eval.checkpoint_cost_s / 3600)
    assert "Evaluation: assumed eval.checkpoint_cost_s=" in format_plan(assumed, a_rows, [])

    # Full fine-tuning takes the DeepSpeed figure for its stage; a method the profile lacks falls
    # back to the assumed rate and says so.
    full = load_config(REPO / "configs" / "paper.yaml", ["training.method=full", "training.deepspeed=zero3",
                                                         f"cluster.profile={path}"])
    assert "measured 50 TFLOP/s (full:zero3)" in format_plan(full, plan_runs(full, build_sweep(full)), [])
    lora_only = _profile(tmp_path, train={"lora": {"achieved_tflops": 100.0}})
    full2 = load_config(REPO / "configs" / "paper.yaml", ["training.method=full", "training.deepspeed=zero3",
                                                          f"cluster.profile={lora_only}", "cluster.gpu_tflops=250"])
    assert "assumed cluster.gpu_tflops=250 TFLOP/s (the profile" in format_plan(full2, plan_runs(full2, build_sweep(full2)), [])
    assert checkpoint_bytes(full2, arch)[0] > 0


def _compute_hours(row, arch, cfg, tflops: float) -> float:
    from emt.launchers.plan import DEFAULT_TOKENS_PER_EXAMPLE

    t = cfg.training
    tokens = row.steps * t.per_device_batch_size * t.grad_accum * DEFAULT_TOKENS_PER_EXAMPLE
    held = min(row.heldout, cfg.checkpointing.heldout_max_examples or row.heldout)
    flops = 4 * arch.params() * tokens + 2 * arch.params() * (row.checkpoints + 1) * held * DEFAULT_TOKENS_PER_EXAMPLE
    return flops / (tflops * 1e12) / 3600


def test_bad_profile_is_one_clear_config_error(tmp_path) -> None:
    from emt.core.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "paper.yaml", [f"cluster.profile={tmp_path / 'missing.json'}"])
    assert "cluster.profile" in str(err.value) and "no such file" in str(err.value) and "bench/gpu_check.py" in str(err.value)
    bad = _profile(tmp_path, train={"lora": {"achieved_tflops": -3}}, eval={"s_per_checkpoint": 5.0})
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "paper.yaml", [f"cluster.profile={bad}"])
    msg = str(err.value)
    # Every problem of the file in one message.
    assert "profile.train.lora.achieved_tflops: must be a number > 0, got -3" in msg
    assert "s_per_checkpoint needs sequences, max_new_tokens and batch_size" in msg
    (tmp_path / "old.json").write_text('{"profile": {"schema": 0}}')
    with pytest.raises(ConfigError, match="schema 1"):
        load_config(REPO / "configs" / "paper.yaml", [f"cluster.profile={tmp_path / 'old.json'}"])
    with pytest.raises(ConfigError, match="unknown key 'profil'"):
        load_config(REPO / "configs" / "paper.yaml", ["cluster.profil=x.json"])


# ----------------------------------------------------------------------------------------------
# The cost plan (emt.launchers.cost)


def _paper(*ov: str):
    return load_config(REPO / "configs" / "paper.yaml", list(ov))


def _cost(cfg):
    from emt.launchers.cost import judge_costs, judge_load, train_work

    work = train_work(cfg, plan_runs(cfg, build_sweep(cfg)))
    load = judge_load(cfg)
    return work, load, judge_costs(cfg, work, load)


def test_cost_table_follows_the_config() -> None:
    from emt.eval.judge import PRICES_DATE
    from emt.eval.plan import load_traits
    from emt.launchers.cost import CHAT_OVERHEAD_TOKENS, eval_hours, format_costs, usd

    cfg = _paper()
    work, load, [jc] = _cost(cfg)
    # The paper study: 281 + 210 checkpoints per domain level, step 0 of each run included; in
    # tasks of eval.checkpoints_per_task=20 (282 -> 15, 211 -> 11).
    assert sum(w.checkpoints for w in work) == 1479 and sum(w.tasks for w in work) == 78
    # 40 questions x 10 samples x (trait + coherence) per checkpoint: ~1.2M calls for the study,
    # plus the persona vectors (5 pairs x 20 questions x 2 sides x 2 samples x 2 judgements, 2 traits).
    assert load.calls == 800 and load.persona_calls == 1600
    assert jc.calls == 1479 * 800 + 6 * 1600 == 1_192_800
    # Input tokens: the rendered templates (chars/4) plus chat formatting, plus answers up to the cap.
    traits = load_traits(cfg)
    chars = sum(len(t.judge_prompt_for(q, "")) + len(t.coherence_prompt_for(q, "")) for t in traits for q in t.questions)
    assert load.fixed_tokens == pytest.approx(chars * 10 / 4 + 800 * CHAT_OVERHEAD_TOKENS)
    assert jc.input_max - jc.input_min == pytest.approx(1479 * 800 * 1000 + 6 * 1600 * 128)
    assert jc.output == jc.calls  # max_tokens=1
    assert jc.usd_min == pytest.approx((jc.input_min * 0.40 + jc.output * 1.60) / 1e6)
    assert jc.usd_max == pytest.approx((jc.input_max * 0.40 + jc.output * 1.60) / 1e6)
    # Evaluation GPU-hours: checkpoints x eval.checkpoint_cost_s + tasks x eval.task_startup_s.
    assert sum(eval_hours(cfg, w, 60.0) for w in work) == pytest.approx((1479 * 60 + 78 * 180) / 3600)
    text = format_costs(cfg, work)
    assert "1,192,800" in text and usd(jc.usd_min, jc.usd_max) in text and f"built-in table of {PRICES_DATE}" in text
    assert "evaluation: 1,479 checkpoints, 78 task(s)" in text and "28.55" in text

    # Twice the samples: twice the scoring calls and tokens; the persona vectors' are their own setting.
    _, load2, [jc2] = _cost(_paper("eval.samples_per_question=20"))
    assert load2.calls == 2 * load.calls and load2.fixed_tokens == pytest.approx(2 * load.fixed_tokens)
    assert jc2.calls - 6 * 1600 == 2 * (jc.calls - 6 * 1600)
    # A longer answer cap raises only the upper bound; half the questions halve the calls.
    _, _, [jc3] = _cost(_paper("eval.max_new_tokens=2000"))
    assert jc3.input_min == pytest.approx(jc.input_min) and jc3.input_max - jc.input_max == pytest.approx(1479 * 800 * 1000)
    _, load4, _ = _cost(_paper("eval.questions_per_trait=10"))
    assert load4.calls == load.calls // 2
    # No persona vectors without activation capture.
    _, load5, [jc5] = _cost(_paper("activations.layers=[]"))
    assert load5.persona_calls == 0 and jc5.calls == 1479 * 800
    # More eval GPUs per task: GPU-hours scale with them.
    two = _paper("cluster.eval.gpus=2")
    assert eval_hours(two, work[0], 60.0) == pytest.approx(2 * eval_hours(cfg, work[0], 60.0))


def test_judge_prices_override_the_table_and_unpriced_judges_say_so(tmp_path: Path) -> None:
    from emt.launchers.cost import format_costs
    from emt.launchers.preflight import prepare_builtin_data

    _, _, [base] = _cost(_paper())
    cfg = _paper("judge.prices={gpt-4.1-mini: [0.8, 3.2]}")
    work, _, [jc] = _cost(cfg)
    assert jc.price == ("gpt-4.1-mini", 0.8, 3.2) and jc.usd_max == pytest.approx(2 * base.usd_max)
    assert "judge.prices; judge.prices overrides" in format_costs(cfg, work)
    # The longest prefix wins, built-in or configured.
    _, _, [dated] = _cost(_paper("judge.prices={gpt-4.1-mini-2025: [0.2, 0.8]}"))
    assert dated.price == ("gpt-4.1-mini-2025", 0.2, 0.8) and dated.usd_max == pytest.approx(base.usd_max / 2)

    # A served judge has no price (its GPU job is separate) and gets no persona-vector calls.
    served = load_config(REPO / "configs" / "judge-serve.yaml")
    work, load, costs = _cost(served)
    assert [c.calls for c in costs] == [1479 * 800 + 6 * load.persona_calls, 1479 * 800]
    assert costs[1].price is None and costs[1].usd_max is None
    text = format_costs(served, work)
    assert "launch/judge_serve.py" in text and "+?" in text
    priced = load_config(REPO / "configs" / "judge-serve.yaml", ["judge.prices={Qwen/: [0.1, 0.1]}"])
    assert _cost(priced)[2][1].price == ("Qwen/", 0.1, 0.1)

    # A local judge: forward passes in the eval job, no dollars, nothing generated.
    # (its own output root with the builtin data written: the plan counts checkpoints from the data,
    # and the checkout's outputs/ may or may not hold them)
    dbg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"])
    prepare_builtin_data(dbg)
    work, load, [local] = _cost(dbg)
    assert local.where == "local" and local.usd_max == 0.0 and local.output == 0.0 and local.calls > 0
    assert "no dollars" in format_costs(dbg, work)


def test_bad_judge_prices_fail_naming_the_key() -> None:
    from emt.core.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _paper("judge.prices={gpt-4.1-mini: [0.4], gpt-4.1: [-1, 2], gpt-4o: [1, 2]}")
    msg = str(err.value)  # every bad entry at once, each under its key
    assert "judge.prices.gpt-4.1-mini: must be [USD per 1M input tokens, USD per 1M output tokens]" in msg
    assert "judge.prices.gpt-4.1: must be" in msg and "got [-1.0, 2.0]" in msg and "2 problems" in msg
    with pytest.raises(ConfigError, match="judge.prices.gpt-4o: expected a number, got 'x'"):
        _paper("judge.prices={gpt-4o: [1, x]}")
    with pytest.raises(ConfigError, match="judge.prices: expected a mapping"):
        _paper("judge.prices=[0.4, 1.6]")


def test_monitor_adds_its_jobs_to_the_dry_run(tmp_path, capsys) -> None:
    from emt.launchers.cost import format_costs, train_work
    from emt.launchers.train import train_sweep

    ov = [f"cluster.output_root={tmp_path}"]
    outs = {}
    for monitor in (False, True):
        rc = train_sweep(REPO / "configs" / "paper.yaml", overrides=ov, mode="local", dry_run=True, monitor=monitor)
        assert rc == 2  # the paper's data files are not here
        outs[monitor] = capsys.readouterr().out
    assert outs[False] != outs[True]
    assert "monitor" not in outs[False].split("Cost of", 1)[1].lower()
    assert "monitor: 6 job(s), scoring as they train" in outs[True]
    assert "Monitor (--monitor): a job per submitted run (6;" in outs[True]

    # Each monitor job is held for the longer of its training and its scoring (one start-up).
    cfg = load_config(REPO / "configs" / "paper.yaml", ov)
    work = train_work(cfg, plan_runs(cfg, build_sweep(cfg)))
    held = sum(max(w.train_wall_hours, (w.checkpoints * 60 + 180) / 3600) for w in work)
    text = format_costs(cfg, work, monitor=[w.name for w in work])
    row = next(line for line in text.splitlines() if "monitor: 6 job(s)" in line)
    assert f"{held:,.2f}" in row and "evaluation:" not in text  # the monitors score everything
    # Scoring slower than a monitor's time limit is a warning with the fix.
    short = load_config(REPO / "configs" / "paper.yaml", ov + ["cluster.eval.time_min=60", "cluster.train.time_min=60"])
    assert "WARNING: monitor jobs would outlast their 60-min limit" in format_costs(short, work, monitor=["medical_mild"])


def test_eval_dry_run_costs_only_the_missing_checkpoints(tmp_path, capsys) -> None:
    from emt.core import paths
    from emt.eval.plan import eval_hash, eval_root
    import json

    from emt.launchers.cost import judge_load, tokens, usd
    from emt.launchers.evaluate import eval_runs

    ov = [f"cluster.output_root={tmp_path}"]
    cfg = load_config(REPO / "configs" / "paper.yaml", ov)
    run = next(r for r in build_sweep(cfg) if r.name == "medical_mild")
    for s in range(2, 42, 2):  # 20 complete checkpoints (markers only: the dry run reads no weights)
        d = paths.checkpoint_dir(run.path, s)
        d.mkdir(parents=True)
        paths.checkpoint_marker(d).write_text("{}")
    root = eval_root(run, eval_hash(cfg))
    root.mkdir(parents=True)
    # Earlier results: answers of 1200 and 400 characters, a mean of 200 tokens at 4 characters each.
    scored = {"traits": {"evil": {"responses": [["x" * 1200] * 10] * 20},
                         "hallucination": {"responses": [["y" * 400] * 10] * 20}}}
    for s in (0, 2, 4, 6, 8):
        paths.result_file(root, s).write_text(json.dumps(scored))

    def dry() -> str:
        eval_runs(REPO / "configs" / "paper.yaml", overrides=ov, run_names=["medical_mild"], mode="local", dry_run=True)
        return capsys.readouterr().out

    out = dry()
    assert "16 to score in 1 task(s)" in out and "evaluation: 16 checkpoints, 1 task(s)" in out
    assert f"{16 * 800:,}" in out  # step 0 is scored, so its persona vectors exist: no persona calls
    # A point estimate at the measured answer length: the fixed part plus 200 tokens per call.
    load = judge_load(cfg)
    t_in = 16 * load.fixed_tokens + 16 * 800 * 200
    assert (f"already scored here (~200 tokens): ~{tokens(t_in)} input tokens, "
            f"~{usd((t_in * 0.40 + 16 * 800 * 1.60) / 1e6, None, one=True)}") in out
    paths.result_file(root, 0).unlink()
    out = dry()
    assert "evaluation: 17 checkpoints, 1 task(s)" in out and f"{17 * 800 + 1600:,}" in out


def test_batch_judge_costs_half_and_says_so() -> None:
    from emt.launchers.cost import format_costs, judge_costs, judge_load

    cfg = _paper()
    work, _, [std] = _cost(cfg)
    spec = dataclasses.replace(cfg.judge.judges[0], batch=True)
    batch_cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, judges=(spec,)))
    _, _, [jc] = _cost(batch_cfg)
    assert jc.batch and jc.calls == std.calls and jc.input_max == std.input_max
    assert jc.price == ("gpt-4.1-mini", 0.20, 0.80)
    # The checkpoints' calls at half the price; the persona vectors' (synchronous, on the GPU) at the full one.
    load = judge_load(cfg)
    personas = sum(1 for w in work if w.persona)
    assert personas == len(work) and load.persona_calls > 0  # the paper config builds them
    p_lo = personas * (load.persona_fixed_tokens * 0.40 + load.persona_calls * 1.60) / 1e6
    p_hi = p_lo + personas * load.persona_answer_cap_tokens * 0.40 / 1e6
    assert jc.usd_min == pytest.approx((std.usd_min - p_lo) / 2 + p_lo)
    assert jc.usd_max == pytest.approx((std.usd_max - p_hi) / 2 + p_hi)
    text = format_costs(batch_cfg, work)
    assert "(batch)" in text and "Batch API price" in text and "$0.20 in / $0.80 out" in text
    assert "the persona vectors' calls are synchronous" in text and "judge.batch_harvest_min=1500" in text
    assert "(batch)" not in format_costs(cfg, work)
    # Monitored runs are scored synchronously: their share is at the standard price.
    names = [w.name for w in work]
    [all_mon] = judge_costs(batch_cfg, work, judge_load(batch_cfg), monitored=set(names))
    assert all_mon.usd_max == pytest.approx(std.usd_max) and not all_mon.batch
    half = set(names[:3])
    [mixed] = judge_costs(batch_cfg, work, judge_load(batch_cfg), monitored=half)
    assert std.usd_max / 2 < mixed.usd_max < std.usd_max
    assert "monitored runs are scored synchronously" in format_costs(batch_cfg, work, monitor=sorted(half))


def test_eval_plan_leaves_batch_waiting_steps_to_the_consolidation(tmp_path: Path) -> None:
    """Steps whose answers wait for Batch API batches get no array task (no GPU): the plan says
    they are harvested by the consolidation job, and --json lists them."""
    from emt.eval.plan import eval_hash, eval_root
    from emt.launchers.evaluate import plan_eval

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"])
    [run] = build_sweep(cfg, "all", runs=["medical_mild"])
    ehash = eval_hash(cfg)
    [before], _ = plan_eval(cfg, [run], ehash, [], None, None)
    assert before.todo == [0] and before.waiting == [] and before.shards == [[0]]
    answers = paths.judge_batch_answers(eval_root(run, ehash), 0)
    answers.parent.mkdir(parents=True)
    answers.write_text("{}")
    [after], _ = plan_eval(cfg, [run], ehash, [], None, None)
    assert after.todo == [] and after.shards == [] and after.waiting == [0] and after.scored == 0
    assert "0 to score in 0 task(s); 1 submitted to the Batch API, harvested by the consolidation job" in \
        after.lines(ehash)[0]
    assert after.to_json(ehash)["batch_waiting"] == [0]
