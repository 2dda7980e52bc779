"""launch/train.py and emt.launchers (train, preflight): plans, and input errors caught before any submission."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEBUG_CONFIG, PY, REPO, debug_overrides, launch_cmd

from emt.core import paths
from emt.builtin.synth import write_debug_datasets


def run_launcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launch_cmd(*args), capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def submissions(root: Path) -> list[Path]:
    return list(root.glob("runs/*/submission.json")) + list(root.glob("runs/*/logs"))


def make_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_debug_datasets(data, n_per_file=40, seed=0)
    return data


def test_paper_dry_run_plans_six_runs(tmp_path: Path) -> None:
    # The default config is configs/paper.yaml.
    res = subprocess.run([PY, str(REPO / "launch" / "train.py"), "--sweep", "all", "--dry-run",
                          f"cluster.output_root={tmp_path}/o"], capture_output=True, text=True, timeout=120, cwd=REPO)
    out = res.stdout
    rows = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] in
            {f"{d}_{lv}" for d in ("medical", "math") for lv in ("normal", "mild", "strong")}]
    assert len(rows) == 6, out
    medical = [ln.split() for ln in rows if ln.startswith("medical_")]
    # 9,986 examples -> 8,987 train -> ceil(ceil(8987/2)/8) = 562 steps -> 281 checkpoints.
    assert all(r[2] == "9986*" and r[5] == "562" and r[6] == "281" for r in medical), out
    assert "Would submit 6 job(s)" in out
    assert res.returncode == 2 and "data file not found" in out  # the data is not on this machine
    assert not (tmp_path / "o").exists()  # a dry run creates nothing


def test_malformed_training_file_stops_before_submission(tmp_path: Path, out_root: Path) -> None:
    data = make_data(tmp_path)
    bad = data / "math" / "misaligned_1.jsonl"
    lines = bad.read_text().splitlines()
    lines[6] = lines[6][:-5]  # truncated JSON on line 7
    lines[11] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    bad.write_text("\n".join(lines) + "\n")
    res = run_launcher("--local", *debug_overrides(out_root), f"data.root={data}")
    assert res.returncode == 2
    assert f"{bad}:7: not valid JSON" in res.stderr and f"{bad}:12: no assistant turn" in res.stderr
    assert "nothing was submitted" in res.stderr
    assert submissions(out_root) == []


def test_unknown_config_key_stops_before_submission(out_root: Path) -> None:
    res = run_launcher("--local", *debug_overrides(out_root), "training.learnin_rate=1")
    assert res.returncode == 2
    assert "unknown key 'learnin_rate' in training; valid keys:" in res.stderr and "learning_rate" in res.stderr
    assert submissions(out_root) == []


def test_unknown_key_in_yaml_file_names_line(tmp_path: Path, out_root: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEBUG_CONFIG.read_text().replace("cluster: cluster/local.yaml",
                                                     f"cluster: {DEBUG_CONFIG.parent}/cluster/local.yaml")
                   + "training_extra: 1\n")
    res = subprocess.run([PY, str(REPO / "launch" / "train.py"), "--config", str(cfg), "--local",
                          *debug_overrides(out_root)], capture_output=True, text=True, timeout=120, cwd=REPO)
    n = len(cfg.read_text().splitlines())
    assert res.returncode == 2 and f"{cfg}:{n}: unknown key 'training_extra' in top level" in res.stderr


def test_missing_data_file_stops_before_submission(tmp_path: Path, out_root: Path) -> None:
    data = make_data(tmp_path)
    (data / "medical" / "normal.jsonl").unlink()
    res = run_launcher("--local", *debug_overrides(out_root), f"data.root={data}")
    assert res.returncode == 2
    assert f"{data}/medical/normal.jsonl: data file not found" in res.stderr
    assert submissions(out_root) == []


def test_bad_selector_lists_choices(out_root: Path) -> None:
    res = run_launcher("--local", "--sweep", "medicine", *debug_overrides(out_root))
    assert res.returncode == 2 and "--sweep 'medicine' matches nothing; valid: all, medical, math" in res.stderr
    res = run_launcher("--local", "--runs", "medical_mild,chem_mild", *debug_overrides(out_root))
    assert res.returncode == 2 and "--runs chem_mild: unknown run name" in res.stderr


def test_slurm_mode_without_sbatch_fails_before_submission(out_root: Path, tmp_path: Path) -> None:
    import os
    import sys

    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no sbatch on this PATH
    res = run_launcher(*debug_overrides(out_root), env=env)
    assert res.returncode == 2 and "sbatch not found" in res.stderr and "--local" in res.stderr
    assert submissions(out_root) == []


def test_selection_and_seeds() -> None:
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG)
    assert [r.name for r in build_sweep(cfg, "medical")] == ["medical_normal", "medical_mild", "medical_strong"]
    assert [r.name for r in build_sweep(cfg, "mild")] == ["medical_mild", "math_mild"]
    runs = build_sweep(cfg, "all", runs=["math_strong"], seeds=[0, 1])
    assert [r.name for r in runs] == ["math_strong", "math_strong_s1"]  # seed 0 keeps its bare name
    assert runs[0].hash != runs[1].hash and runs[1].config.training.seed == 1
    assert len({r.hash for r in build_sweep(cfg)}) == 6
    assert build_sweep(cfg)[0].run_dir.endswith(f"medical_normal-{build_sweep(cfg)[0].hash}")
    with pytest.raises(ValueError, match="each seed once"):
        build_sweep(cfg, seeds=[1, 1])


def test_run_hash_follows_training_inputs_not_resources(tmp_path: Path) -> None:
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep

    base = build_sweep(load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"]), "medical_mild")[0]
    more_time = build_sweep(load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}", "cluster.train.time_min=5"]), "medical_mild")[0]
    new_lr = build_sweep(load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}", "training.learning_rate=1e-3"]), "medical_mild")[0]
    assert base.hash == more_time.hash != new_lr.hash
    assert paths.run_dir(tmp_path, "medical_mild", base.hash) == base.path


def test_usage_summary_sums_tasks_once(capsys: pytest.CaptureFixture[str]) -> None:
    """The launcher's judge usage line is the sum of its tasks' numbers (the first task's were
    counted twice); the end-to-end check against the judge server's own counter is in
    tests/eval/test_evaluate.py."""
    from emt.launchers.evaluate import print_usage

    def usage(calls: int) -> dict:
        return {"judge": "j", "model": "gpt-4.1-mini", "calls": calls, "cached": 1, "retries": 2, "failed": 0,
                "nan": 0, "prompt_tokens": 100 * calls, "completion_tokens": calls, "est_cost_usd": 0.5}

    print_usage([{"usage": {"j": usage(10)}}])
    assert "j (gpt-4.1-mini): 10 calls, 1 cached, 2 retries, 1,000 prompt + 10 completion tokens, est. $0.5000" \
        in capsys.readouterr().out
    print_usage([{"usage": {"j": usage(10)}}, {"usage": {"j": usage(5)}}, {}])
    assert "15 calls, 2 cached, 4 retries, 1,500 prompt + 15 completion tokens, est. $1.0000" in capsys.readouterr().out


def test_dry_runs_without_sbatch_say_so(out_root: Path, tmp_path: Path) -> None:
    """A SLURM-mode dry run checks for sbatch as the real launch does (train, eval and serve),
    instead of planning jobs that could never be submitted; a --local dry run does not need it."""
    import os
    import sys

    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no sbatch on this PATH
    res = run_launcher("--dry-run", *debug_overrides(out_root), env=env)
    assert res.returncode == 2 and "sbatch not found: run from a SLURM login node, or pass --local" in res.stdout
    local = run_launcher("--dry-run", "--local", *debug_overrides(out_root), env=env)
    assert local.returncode == 0 and "sbatch not found" not in local.stdout, local.stdout
    ev = subprocess.run([PY, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG), "--run",
                         "medical_mild", "--dry-run", *debug_overrides(out_root)],
                        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert ev.returncode == 2 and "sbatch not found" in ev.stdout, ev.stdout + ev.stderr
    serve = subprocess.run([PY, str(REPO / "launch" / "judge_serve.py"), "--config", str(REPO / "configs" / "judge-serve.yaml"),
                            "--name", "qwen-judge", "--dry-run", f"cluster.output_root={tmp_path / 'serve'}"],
                           capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert serve.returncode == 2 and "sbatch not found" in serve.stderr and "serve on this machine" in serve.stderr
    assert submissions(out_root) == []


def test_output_root_not_writable_is_one_line_before_anything(tmp_path: Path) -> None:
    """The output root is checked before the builtin data is written under it: one line naming
    cluster.output_root (real launch and dry run, train and eval), no traceback, nothing written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    root = blocker / "out"
    res = run_launcher("--local", *debug_overrides(root))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"cluster.output_root={root}: not writable" in res.stderr and "nothing was submitted" in res.stderr
    dry = run_launcher("--local", "--dry-run", *debug_overrides(root))
    assert dry.returncode == 2 and "Traceback" not in dry.stderr
    assert f"cluster.output_root={root}: {blocker} is a file, not a directory" in dry.stdout
    assert "data file not found" not in dry.stdout  # the builtin data lives under the root: one problem, not six
    ev = subprocess.run([PY, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG), "--run",
                         "medical_mild", "--local", *debug_overrides(root)],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ev.returncode == 2 and "Traceback" not in ev.stderr and f"cluster.output_root={root}: not writable" in ev.stderr
    assert blocker.read_text() == "not a directory" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
