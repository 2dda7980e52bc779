"""bench/gpu_check.py in its CPU form (--cpu-tiny): the same parts as on the GPU, with the builtin
tiny model's shapes, so the prepared GPU check cannot rot between GPU runs.

The check runs once per module (about a minute on a loaded 2-core machine); the tests read its
JSON. A part may fail (it is then recorded with its error and log tail and the others still
run); on this CPU every part is expected to produce figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check
from tests.conftest import REPO

STATUSES = {"ok", "error", "timeout", "skipped"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("gpu_check")
    out, work = base / "out", base / "work"
    res = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--cpu-tiny", "--out", str(out), "--work", str(work)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.txt").read_text()
    assert table.strip() in res.stdout  # the table is printed too
    data["_table"] = table
    data["_out"] = str(out)
    return data


def test_every_part_has_figures_or_a_recorded_error(report: dict) -> None:
    assert report["schema"] == 1 and report["mode"] == "cpu-tiny"
    parts = report["parts"]
    assert report["order"] == ["device", "build", "lora", "generate", "vllm", "deepspeed:zero3:2"]
    assert sorted(parts) == sorted(report["order"])
    for name, res in parts.items():
        assert res["status"] in STATUSES, (name, res)
        if res["status"] == "ok":
            assert isinstance(res["figures"], dict) and res["figures"], name
        else:
            assert res["error"], name
        assert name in report["_table"]
    # On this CPU the parts the issue names produce figures.
    for name in ("device", "build", "lora", "generate", "vllm"):
        assert parts[name]["status"] == "ok", (name, parts[name].get("error"), parts[name].get("log_tail"))


def test_lora_training_figures_come_from_train_run(report: dict) -> None:
    f = report["parts"]["lora"]["figures"]
    s = f["settings"]
    assert (s["method"], s["lora_r"], s["batch"], s["grad_accum"], s["every_steps"]) == ("lora", 32, 2, 8, 2)
    assert f["summary_status"] == "complete" and f["steps"] == s["max_steps"] == 6
    assert [i["step"] for i in f["intervals"]] == [2, 4, 6]  # one marker per checkpoint written by train_run
    assert [Path(c).name for c in f["checkpoints"]] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(Path(c, "adapter_model.safetensors").is_file() for c in f["checkpoints"])
    assert f["step_s"] > 0 and f["tokens_per_s"] > 0 and f["achieved_tflops"] > 0
    assert f["tokens_per_step"] == pytest.approx(16 * f["mean_tokens_per_example"])
    assert f["mean_tokens_per_example"] >= report["settings"]["seq_tokens"]
    assert f["model_flops_per_step"] == pytest.approx(4 * f["params"] * f["tokens_per_step"])
    assert f["achieved_tflops"] == pytest.approx(f["model_flops_per_step"] / f["step_s"] / 1e12, rel=1e-3)
    peak = report["parts"]["device"]["figures"]["peak_tflops_measured"]
    assert f["mfu_measured_peak"] == pytest.approx(f["achieved_tflops"] / peak, rel=1e-3)
    assert f["mfu_datasheet"] is None  # no datasheet figure for a CPU
    assert 0 < f["save_share"] < 1 and f["save_s"] > 0


def test_generation_swap_reload_and_capture(report: dict) -> None:
    f = report["parts"]["generate"]["figures"]
    assert f["adapters_from"].startswith("lora part")  # the checkpoints train_run just wrote
    assert [s["step"] for s in f["swap"]] == [2, 4, 6] and [r["step"] for r in f["reload"]] == [2, 4, 6]
    assert all(s["generate_s"] > 0 and s["capture_s"] > 0 and s["capture_bytes"] > 0 for s in f["swap"])
    assert f["reload"][0]["generate_s"] > 0 and f["reload"][1]["generate_s"] is None  # --reload-generate 1
    assert f["reload_over_swap"] == pytest.approx(f["reload_s_per_checkpoint"] / f["swap_s_per_checkpoint"])
    # Answers run to max_new_tokens (stop tokens cannot be sampled from the built model).
    assert f["answer_tokens_mean"] >= 0.8 * f["max_new_tokens"]
    assert f["sequences"] == f["prompts"] * f["samples"]


def test_deepspeed_part_runs_or_says_why(report: dict) -> None:
    import importlib.util

    name = next(n for n in report["parts"] if n.startswith("deepspeed:zero3:"))
    res = report["parts"][name]
    if importlib.util.find_spec("deepspeed") is None:
        assert res["status"] == "error" and "deepspeed" in res["error"].lower()
        return
    assert res["status"] == "ok", res.get("log_tail")
    f = res["figures"]
    assert f["settings"]["method"] == "full" and f["settings"]["deepspeed"] == "zero3"
    assert f["model_flops_per_step"] == pytest.approx(6 * f["params"] * f["tokens_per_step"])
    summary = report["deepspeed"]["zero3"]
    assert summary["measured"] and summary["step_s_full_depth"] > 0 and summary["method"]
    assert report["deepspeed"]["why_reduced"]


def test_profile_feeds_the_plan(report: dict) -> None:
    from emt.core.config import load_config
    from emt.core.profiles import load_profile
    from emt.launchers.plan import format_plan, plan_runs
    from emt.sweep.runs import build_sweep

    path = Path(report["_out"]) / "gpu_check.json"
    prof = load_profile(path)
    lora = report["parts"]["lora"]["figures"]
    assert prof.train_tflops["lora"] == lora["achieved_tflops"] and prof.mode == "cpu-tiny"
    assert prof.eval_s_per_checkpoint == report["parts"]["generate"]["figures"]["swap_s_per_checkpoint"]
    cfg = load_config(REPO / "configs" / "paper.yaml", [f"cluster.profile={path}"])
    text = format_plan(cfg, plan_runs(cfg, build_sweep(cfg)), [])
    assert f"Training rate: measured {lora['achieved_tflops']:.4g} TFLOP/s (lora) from profile {path}" in text
    assert "CPU tiny form" in text and "Evaluation: " in text and "transformers backend measured" in text


def test_a_failing_part_is_recorded_and_the_next_runs(tmp_path: Path) -> None:
    # No build: the generate part cannot load a model; vllm (skipped on CPU) still runs.
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--cpu-tiny", "--parts", "generate,vllm", "--out", str(out),
                          "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["generate"]["status"] == "error" and parts["generate"]["traceback_tail"]
    assert "Traceback" in parts["generate"]["traceback_tail"] and parts["generate"]["log_tail"] is not None
    assert parts["vllm"]["status"] == "ok"
    assert "ERROR" in (out / "gpu_check.txt").read_text()


def test_a_part_over_its_budget_is_killed_and_recorded(tmp_path: Path) -> None:
    # The device part imports torch and multiplies matrices: far more than 0.2 s.
    res = gpu_check._spawn("device", {"mode": "cpu-tiny", "work": str(tmp_path)}, tmp_path, 0.2)
    assert res["status"] == "timeout" and "budget" in res["error"] and res["wall_s"] < 60
    assert not (tmp_path / "parts" / "device.json").exists()
