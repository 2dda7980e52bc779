"""Killing a --local launcher stops the jobs it started: the real launchers (train, eval) on the
debug config with the tests' tiny model, SIGTERM or SIGINT once their child job runs; the child
processes end, the launcher exits 143 / 130, and a rerun finishes the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import DEBUG_CONFIG, PY, REPO, debug_overrides, launch_cmd

from emt.core import paths
from tests.fakes.judge_server import JudgeServer

STEPS = 4  # 2 checkpoints: the rerun's work stays small
EVAL_SMALL = ["eval.questions_per_trait=2", "eval.samples_per_question=2", "eval.max_new_tokens=8"]


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def _descendants(pid: int) -> list[int]:
    parents = {int(p.name): st[0] for p in Path("/proc").iterdir() if p.name.isdigit() and (st := _stat(int(p.name)))}
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (os.kill(pid, 0) alone counts zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _signal_once_child_runs(cmd: list[str], sig: signal.Signals, log: Path) -> tuple[int, list[int], str]:
    """Start a launcher, wait until its submitit job's task runs, send it ``sig``; its exit code,
    the job's processes seen before the signal, and its stderr."""
    with open(log, "w") as err:
        # SIGINT as in a terminal, even when this suite runs in the background of a script (which
        # starts it with SIGINT ignored; a launcher keeps a signal it was told to ignore ignored).
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        kids: list[int] = []
        while time.monotonic() < deadline:
            kids = _descendants(proc.pid)
            if any("submitit.core._submit" in _cmdline(k) for k in kids):
                break
            assert proc.poll() is None, f"the launcher ended before its job ran: {log.read_text()[-3000:]}"
            time.sleep(0.05)
        else:
            raise AssertionError(f"no local job started: {log.read_text()[-3000:]}")
        proc.send_signal(sig)
        code = proc.wait(timeout=180)
        deadline = time.monotonic() + 60
        while any(_running(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return code, kids, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigterm_stops_local_training_and_a_rerun_finishes(out_root: Path, tmp_path: Path) -> None:
    args = ["--local", "--runs", "medical_mild", *debug_overrides(out_root, STEPS)]
    code, kids, err = _signal_once_child_runs(launch_cmd(*args), signal.SIGTERM, tmp_path / "launcher.err")
    assert code == 143, err[-3000:]
    assert "medical_mild: cancelled local job" in err
    assert not [k for k in kids if _running(k)], f"processes of the cancelled job still run: {kids}"
    run = next(out_root.glob("runs/medical_mild-*"))
    assert not paths.train_complete_file(run).is_file()
    again = subprocess.run(launch_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert paths.train_complete_file(run).is_file()
    assert [s for s, _ in paths.complete_checkpoints(run)] == [2, 4]


def test_sigint_stops_local_eval_and_a_rerun_finishes(out_root: Path, tmp_path: Path) -> None:
    train = subprocess.run(launch_cmd("--local", "--runs", "medical_mild", *debug_overrides(out_root, STEPS)),
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    with JudgeServer(process=True) as url:  # a fake OpenAI judge: no judge model to build
        judges = json.dumps([{"backend": "openai", "model": "judge-test", "base_url": url}])
        cmd = [PY, str(REPO / "launch" / "eval_array.py"), "--config", str(DEBUG_CONFIG), "--run", "medical_mild",
               "--local", *debug_overrides(out_root, STEPS), *EVAL_SMALL, f"judge.judges={judges}"]
        code, kids, err = _signal_once_child_runs(cmd, signal.SIGINT, tmp_path / "launcher.err")
        assert code == 130, err[-3000:]
        assert "medical_mild task 0: cancelled local job" in err
        assert not [k for k in kids if _running(k)], f"processes of the cancelled job still run: {kids}"
        run = next(out_root.glob("runs/medical_mild-*"))
        assert not paths.scores_file(run).is_file()
        again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert paths.scores_file(run).is_file()
