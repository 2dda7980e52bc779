"""emt.eval.serve without a model: --stop leaves no endpoint whatever the job's timing; the endpoint
file is private from its first byte; health checks send the server's token."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from emt.core import paths
from tests.fakes.judge_server import JudgeServer
from emt.eval.serve import _write_private_json, healthy, read_endpoint, resolve_server
from emt.launchers.serve import stop_server

# A stand-in for a serve job that ends slowly after its cancel (SIGINT) and, like a job killed
# before its cleanup ran, leaves its endpoint file behind.
_SLOW_JOB = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: (time.sleep(2.0), sys.exit(0)))
print("ready", flush=True)
time.sleep(120)
"""


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _record(root: Path, name: str, job_id: int) -> None:
    from emt.core.records import record_submission

    record_submission(paths.serve_submission_file(root, name),
                      {"kind": "serve", "mode": "local", "job_id": str(job_id), "name": name,
                       "log_folder": str(root / "logs")})


def test_stop_waits_for_a_slow_job_and_removes_what_it_left(tmp_path: Path) -> None:
    job = subprocess.Popen([sys.executable, "-c", _SLOW_JOB], stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "ready"
        _record(tmp_path, "slow", job.pid)
        _write_private_json(paths.serve_endpoint_file(tmp_path, "slow"),
                            {"base_url": f"http://127.0.0.1:{_dead_port()}/v1", "job_id": str(job.pid),
                             "api_key": "t"})
        job_id, removed = stop_server(tmp_path, "slow", wait_s=120, poll_s=0.1)
        # Returned only once the job had ended (its 2 s of cleanup included), and nothing is left.
        assert job_id == str(job.pid) and removed
        assert job.wait(5) == 0
        assert not paths.serve_endpoint_file(tmp_path, "slow").exists()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_stop_removes_a_stale_endpoint_without_a_job(tmp_path: Path) -> None:
    """A job killed with -9 left its endpoint; nothing answers there: --stop removes it."""
    _write_private_json(paths.serve_endpoint_file(tmp_path, "gone"),
                        {"base_url": f"http://127.0.0.1:{_dead_port()}/v1", "job_id": "12345"})
    assert stop_server(tmp_path, "gone", wait_s=5) == (None, True)
    assert not paths.serve_endpoint_file(tmp_path, "gone").exists()
    assert stop_server(tmp_path, "gone", wait_s=5) == (None, False)  # nothing to do, no error


def test_stop_keeps_a_live_server_of_another_job(tmp_path: Path) -> None:
    with JudgeServer(api_key="tok") as url:
        _write_private_json(paths.serve_endpoint_file(tmp_path, "live"),
                            {"base_url": url, "job_id": "999", "api_key": "tok"})
        assert stop_server(tmp_path, "live", wait_s=5) == (None, False)
        assert read_endpoint(tmp_path, "live") is not None


def test_endpoint_file_is_private_and_the_token_goes_to_its_server(tmp_path: Path) -> None:
    f = paths.serve_endpoint_file(tmp_path, "p")
    old = os.umask(0o022)
    try:
        with JudgeServer(api_key="s3cret-token") as url:
            _write_private_json(f, {"base_url": url, "job_id": "1", "api_key": "s3cret-token"})
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
            assert not list(f.parent.glob(".*tmp*"))  # no temporary left beside it
            assert json.loads(f.read_text())["api_key"] == "s3cret-token"
            assert healthy(url, 5.0, api_key="s3cret-token") and not healthy(url, 5.0)
            assert resolve_server(tmp_path, "p", wait_s=5) == (url, "s3cret-token")
    finally:
        os.umask(old)


def test_resolve_server_names_the_fix_when_nothing_answers(tmp_path: Path) -> None:
    import pytest

    _write_private_json(paths.serve_endpoint_file(tmp_path, "x"),
                        {"base_url": f"http://127.0.0.1:{_dead_port()}/v1", "job_id": "1"})
    with pytest.raises(RuntimeError, match="python launch/judge_serve.py --config CONFIG --name x"):
        resolve_server(tmp_path, "x", wait_s=0.5, poll_s=0.1)
