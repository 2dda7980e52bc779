"""emt.train.run through the launcher: checkpoints, resume after kill -9, idempotence, locking."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, debug_overrides, launch_cmd, train_and_kill

from emt.core import atomic, paths
from emt.train.callbacks import CheckpointRecorder
from emt.train.checkpoints import losses_for_checkpoint, prepare_resume, run_lock, strip_resume_state

STEPS = 12  # 6 checkpoints per test run


def run_dir_of(root: Path, name: str) -> Path:
    found = sorted(root.glob(f"runs/{name}-*"))
    assert len(found) == 1, found
    return found[0]


def markers(run: Path) -> dict[int, dict]:
    return {s: json.loads(paths.checkpoint_marker(p).read_text()) for s, p in paths.complete_checkpoints(run)}


def launch(root: Path, *args: str, max_steps: int = STEPS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launch_cmd("--local", *args, *debug_overrides(root, max_steps)),
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_train_one_run_then_relaunch_trains_nothing(out_root: Path) -> None:
    res = launch(out_root, "--runs", "medical_strong")
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_dir_of(out_root, "medical_strong")
    ms = markers(run)
    assert sorted(ms) == [2, 4, 6, 8, 10, 12]
    assert all(m["train_loss"] is not None and m["heldout_loss"] is not None for m in ms.values())
    assert ms[12]["train_loss"] < json.loads(paths.step0_file(run).read_text())["heldout_loss"]
    done = json.loads(paths.train_complete_file(run).read_text())
    assert done["checkpoints"] == [2, 4, 6, 8, 10, 12] and done["steps"] == STEPS
    for _, ckpt in paths.complete_checkpoints(run):  # resume state is dropped once complete
        assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "optimizer.pt").exists()
        # Only what evaluation reads: no tokenizer or model card in an adapter checkpoint (saving
        # them made up most of a save: docs/performance.md, Training).
        assert not (ckpt / "tokenizer.json").exists() and not (ckpt / "README.md").exists()
    assert not (run / "README.md").exists()  # nor trl's model card, rewritten at every save
    assert all(m["train_s"] > 0 and m["save_s"] >= 0 and m["eval_s"] > 0 for m in ms.values())
    prov = json.loads(paths.provenance_file(run).read_text())
    assert prov["config_hash"] == run.name.rsplit("-", 1)[1]
    assert {"torch", "transformers", "peft", "trl"} <= set(prov["packages"]) and "commit" in prov["git"]
    assert "learning_rate" in paths.resolved_config_file(run).read_text()
    sub = paths.submission_file(run).stat().st_mtime

    again = launch(out_root, "--runs", "medical_strong")
    assert again.returncode == 0 and "Nothing to submit" in again.stdout
    assert paths.submission_file(run).stat().st_mtime == sub


def test_kill_9_mid_run_resumes_from_newest_checkpoint(out_root: Path, tmp_path: Path) -> None:
    args = ("--runs", "math_mild")
    run = train_and_kill(out_root, "math_mild", 2, *debug_overrides(out_root, STEPS))
    before = [s for s, _ in paths.complete_checkpoints(run)]
    assert before and before[-1] < STEPS
    # A checkpoint cut off mid-write: its directory exists without the completion marker.
    torn = paths.checkpoint_dir(run, before[-1] + 2)
    torn.mkdir(exist_ok=True)
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    res = launch(out_root, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    # The resumed job logs where it resumed from (its log lands in the run's logs folder).
    logs = "".join(p.read_text() for p in run.glob("logs/*/*.err"))
    assert f"resuming from checkpoint-{before[-1]}" in logs
    assert "removing incomplete checkpoint" in logs
    resumed = markers(run)

    # The same run, uninterrupted, in another output root.
    other = tmp_path / "other"
    other.mkdir()
    (other / "models").symlink_to(os.readlink(out_root / "models"), target_is_directory=True)
    assert launch(other, *args).returncode == 0
    clean = markers(run_dir_of(other, "math_mild"))
    assert sorted(resumed) == sorted(clean) == [2, 4, 6, 8, 10, 12]
    for s in clean:  # a true resume (optimizer, scheduler, RNG, data order), not a restart
        assert resumed[s]["train_loss"] == pytest.approx(clean[s]["train_loss"], rel=1e-4), s
        assert resumed[s]["heldout_loss"] == pytest.approx(clean[s]["heldout_loss"], rel=1e-4), s


def test_prepare_resume_and_strip(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for s in (2, 4, 6):
        d = paths.checkpoint_dir(run, s)
        d.mkdir(parents=True)
        (d / "optimizer.pt").write_bytes(b"x")
        (d / "adapter_model.safetensors").write_bytes(b"x")
    for s in (2, 4):
        atomic.write_json(paths.checkpoint_marker(paths.checkpoint_dir(run, s)), {"step": s})
    assert prepare_resume(run) == paths.checkpoint_dir(run, 4)
    assert not paths.checkpoint_dir(run, 6).exists()
    strip_resume_state(paths.checkpoint_dir(run, 2))
    assert not (paths.checkpoint_dir(run, 2) / "optimizer.pt").exists()
    assert (paths.checkpoint_dir(run, 2) / "adapter_model.safetensors").exists()
    assert prepare_resume(tmp_path / "empty") is None


def test_losses_for_checkpoint() -> None:
    hist = [{"loss": 4.0, "step": 1}, {"loss": 2.0, "step": 2}, {"eval_loss": 3.0, "step": 2},
            {"loss": 1.0, "step": 3}, {"loss": 3.0, "step": 4}, {"eval_loss": 1.5, "step": 4}]
    assert losses_for_checkpoint(hist, 0, 2) == {"train_loss": 3.0, "heldout_loss": 3.0}
    assert losses_for_checkpoint(hist, 2, 4) == {"train_loss": 2.0, "heldout_loss": 1.5}
    assert losses_for_checkpoint(hist, 4, 6) == {"train_loss": None, "heldout_loss": None}


def test_second_process_on_same_run_backs_off(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run) as first:
        assert first
        child = subprocess.run(
            [os.sys.executable, "-c",
             "import sys; from pathlib import Path; from emt.train.checkpoints import run_lock\n"
             "with run_lock(Path(sys.argv[1])) as got: print(got)", str(run)],
            capture_output=True, text=True, timeout=60)
        assert child.stdout.strip() == "False"
    with run_lock(run) as again:
        assert again


def test_keep_every_and_resume_state_bookkeeping(tmp_path: Path) -> None:
    """keep_every deletes off-grid checkpoints older than the newest, except one still needed to
    resume; resume state stays on the newest keep_resume_state checkpoints that have it."""
    def make(run: Path, steps: range, with_state: set[int]) -> None:
        for s in steps:
            d = paths.checkpoint_dir(run, s)
            d.mkdir(parents=True)
            (d / "adapter_model.safetensors").write_bytes(b"x")
            if s in with_state:
                (d / "optimizer.pt").write_bytes(b"x")
            atomic.write_json(paths.checkpoint_marker(d), {"step": s})

    recorder = CheckpointRecorder  # its bookkeeping runs without transformers
    a = tmp_path / "a"
    make(a, range(2, 10, 2), {4, 8})
    recorder(a, 1, 4, 8, True)  # rank 0 tidies up what an earlier attempt left
    assert [s for s, _ in paths.complete_checkpoints(a)] == [4, 8]
    assert paths.has_resume_state(paths.checkpoint_dir(a, 8)) and not paths.has_resume_state(paths.checkpoint_dir(a, 4))

    b = tmp_path / "b"
    make(b, range(2, 10, 2), {6})  # the only resume point is off the keep_every grid
    rec = recorder(b, 1, 4, 8, True)
    assert [s for s, _ in paths.complete_checkpoints(b)] == [4, 6, 8]  # 6 is kept while it is needed
    rec.finish(8)  # the run completed: nothing is needed to resume any more
    assert [s for s, _ in paths.complete_checkpoints(b)] == [4, 8]
    assert not any(p.name.startswith("checkpoint-") and not paths.checkpoint_marker(p).exists() for p in b.iterdir())

    c = tmp_path / "c"
    make(c, range(2, 8, 2), {2, 4, 6})
    recorder(c, 2, None, 6, False)  # other ranks leave the files alone
    assert all(paths.has_resume_state(p) for _, p in paths.complete_checkpoints(c))
    recorder(c, 2, None, 6, True)
    assert [paths.has_resume_state(p) for _, p in paths.complete_checkpoints(c)] == [False, True, True]
