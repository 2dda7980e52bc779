"""Local jobs end with their launcher: SIGINT/SIGTERM while a launcher waits cancel every local job
it started (emt.launchers.running.stop_with_launcher), and local jobs share the machine's cores
(emt.core.runtime.local_threads). The mechanism on real submitit child processes (a sleeping
job, no model); the launchers end to end in tests/launchers/test_local_stop_pipeline.py."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import DEBUG_CONFIG

from emt.core import runtime
from emt.core.runtime import LOCAL_JOBS_ENV, cpu_threads, local_threads
from emt.launchers import running
from emt.launchers.running import process_alive, process_tree, sharing_cores, stop_with_launcher, submitting, watch


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal() -> "object":
    """A suite started in the background by a script inherits SIGINT ignored (the shell sets it
    so), and a launcher keeps an ignored signal ignored; these tests are about a launcher run in a
    terminal, where Ctrl-C reaches it."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("cpus, jobs, cores, want", [
    (2, 1, 2, 2),   # one job: its cpus
    (2, 2, 2, 1),   # the measured case: 2 jobs x 2 cpus on 2 cores -> 1 thread each
    (4, 1, 2, 2),   # never more than the cores
    (2, 3, 2, 1),   # more jobs than cores: still 1
    (8, 2, 16, 8),  # room for every job's cpus
    (8, 4, 16, 4),
    (8, 3, 16, 5),  # floor of the share
    (0, 1, 2, 1),   # at least 1
])
def test_local_threads_is_the_jobs_share_of_the_cores(cpus: int, jobs: int, cores: int, want: int) -> None:
    assert local_threads(cpus, jobs, cores) == want


def test_cpu_threads_shares_cores_only_for_local_jobs(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(runtime, "_logged", None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv(LOCAL_JOBS_ENV, raising=False)
    assert cpu_threads(4) == 4  # launched alone (or not by a launcher): its cpus, as before
    monkeypatch.setenv(LOCAL_JOBS_ENV, "2")
    caplog.clear()  # the line above may be captured too, when an earlier test set INFO logging up
    with caplog.at_level(logging.INFO, logger="emt.core.runtime"):
        assert cpu_threads(4) == 2 and cpu_threads(4) == 2
    lines = [r.getMessage() for r in caplog.records if "CPU threads" in r.getMessage()]
    assert lines == ["CPU threads for this job: 2 (cpus 4, 2 local job(s) at once on 4 usable cores)"]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # SLURM gives each job its cpus: no sharing
    assert cpu_threads(4) == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv(LOCAL_JOBS_ENV, "zero")
    with pytest.raises(ValueError, match=f"{LOCAL_JOBS_ENV}='zero': expected a positive integer"):
        cpu_threads(4)


def test_sharing_cores_reaches_local_jobs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emt.core.config import load_config
    from emt.jobs.slurm import make_executor, wait_all

    monkeypatch.delenv(LOCAL_JOBS_ENV, raising=False)
    cluster = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"]).cluster
    with sharing_cores("local", 3):
        job = make_executor("consolidate", cluster, "local", tmp_path / "logs" / "%j", "t").submit(
            os.getenv, LOCAL_JOBS_ENV)
    assert LOCAL_JOBS_ENV not in os.environ  # restored once the jobs are started
    assert wait_all([("job", job)]) == {"job": (True, "3")}  # what the job's cpu_threads reads
    with sharing_cores("slurm", 3), sharing_cores("debug", 3):
        assert LOCAL_JOBS_ENV not in os.environ


def _sleeping_job(tmp_path: Path):  # type: ignore[no-untyped-def]
    from emt.core.config import load_config
    from emt.jobs.slurm import make_executor

    cluster = load_config(DEBUG_CONFIG, [f"cluster.output_root={tmp_path}"]).cluster
    return make_executor("consolidate", cluster, "local", tmp_path / "logs" / "%j", "t").submit(time.sleep, 600)


def _wait_for_task(job, deadline_s: float = 120) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """The job's processes once its task (the controller's child) runs."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        tree = process_tree(int(job.job_id))
        if len(tree) >= 2:
            return tree
        time.sleep(0.05)
    raise AssertionError("the local job's task never started")


def _kill_tree(job) -> None:  # type: ignore[no-untyped-def]
    """Cleanup after a failed test: no sleeping task is left behind."""
    for pid in process_tree(int(job.job_id)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    job.done()


def _gone(pids: dict[int, int], deadline_s: float = 60) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not any(process_alive(p, s) for p, s in pids.items()):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_watched_local_jobs_and_exits(sig: signal.Signals, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(sig)
    job = None
    try:
        with pytest.raises(SystemExit) as stopped:
            with stop_with_launcher("local"):
                with submitting():
                    job = watch("sleeper", _sleeping_job(tmp_path))
                procs = _wait_for_task(job)
                os.kill(os.getpid(), sig)
                time.sleep(60)  # the handler interrupts this
                pytest.fail("the signal did not stop the block")
        assert stopped.value.code == 128 + sig
        assert _gone(procs), "the cancelled job's processes still run"
        assert f"sleeper: cancelled local job {job.job_id}" in capsys.readouterr().err
        assert signal.getsignal(sig) is before  # the launcher's own handlers are back
    finally:
        if job is not None and not job.done():
            _kill_tree(job)


def test_signal_while_submitting_waits_until_the_job_is_registered(tmp_path: Path) -> None:
    reached = False
    job = None
    try:
        with pytest.raises(SystemExit) as stopped:
            with stop_with_launcher("local"):
                with submitting():
                    os.kill(os.getpid(), signal.SIGTERM)
                    job = watch("late", _sleeping_job(tmp_path))
                    reached = True
                pytest.fail("the deferred signal was not raised after the submission")
        assert reached and stopped.value.code == 143
        assert job is not None and job.done()  # registered, hence cancelled
    finally:
        if job is not None and not job.done():
            _kill_tree(job)


def test_other_modes_and_ignored_signals_keep_their_handlers() -> None:
    before = {s: signal.getsignal(s) for s in running.STOP_SIGNALS}
    for mode in ("slurm", "debug"):
        with stop_with_launcher(mode):
            assert {s: signal.getsignal(s) for s in running.STOP_SIGNALS} == before
            assert watch("x", object()) is not None and running._WATCH.jobs == []  # nothing to cancel
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. nohup: the launcher was told to ignore it
    try:
        with stop_with_launcher("local"):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is running._on_signal
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
    assert {s: signal.getsignal(s) for s in running.STOP_SIGNALS} == before


def test_cancel_kills_what_outlives_the_grace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job whose controller ignores the cancel (SIGINT ignored, as for a launcher started in the
    background by a non-interactive shell) is killed once the grace has passed."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the controller and its task
    try:
        job = _sleeping_job(tmp_path)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        procs = _wait_for_task(job)
        assert running.cancel_local_jobs([("deaf", job)], grace_s=1.0, kill_wait_s=30.0) == ["deaf"]
        assert _gone(procs, 5)
        err = capsys.readouterr().err
        assert "deaf: cancelled local job" in err and "still running 1 s after the cancel; killing" in err
    finally:
        if not job.done():
            _kill_tree(job)


def test_jobs_started_by_a_launcher_ignoring_sigint_can_still_be_cancelled(tmp_path: Path) -> None:
    """A launcher started with SIGINT ignored (in the background of a script) keeps ignoring it,
    but the local jobs it starts do not inherit that: submitit's cancel (SIGINT to the job's
    controller, also what ``emt serve --stop`` sends) ends them without the SIGKILL fallback."""
    from emt.jobs.slurm import _cancellable_children

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _cancellable_children("local"):
            job = _sleeping_job(tmp_path)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the launcher still ignores it
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        procs = _wait_for_task(job)
        job.cancel()
        assert _gone(procs, 60), "the job's controller ignored the cancel"
    finally:
        if not job.done():
            _kill_tree(job)
