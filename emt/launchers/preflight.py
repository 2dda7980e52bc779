"""Checks every launcher runs before it submits anything, and the inputs it prepares first.

Every input problem is found before the first job is submitted, and reported at once: a real
launch raises :class:`PreflightError` listing them all; a dry run prints them under "Problems
that would stop this launch" and exits 2 (:func:`dry_run_exit`).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Sequence

from emt.builtin.organism import write_organism_datasets
from emt.builtin.synth import write_debug_datasets
from emt.core import paths
from emt.core.config import BUILTIN_DEBUG_DATA, BUILTIN_ORGANISM, BUILTIN_TINY_MODEL, Config, ConfigError
from emt.core.dsconfig import problems as deepspeed_problems
from emt.eval.monitor import watched_traits
from emt.eval.serve import endpoint_state
from emt.eval.plan import judge_key_envs, judge_needs_key, load_traits
from emt.eval.task import SERVE_PREFIX
from emt.jobs.slurm import sbatch_available
from emt.store import tracker
from emt.sweep.data import DataError, read_chat_jsonl
from emt.sweep.runs import Run, data_root


class PreflightError(ConfigError):
    """Problems found before submitting; nothing was submitted."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(problems, header="Pre-flight checks failed; nothing was submitted")


def dry_run_exit(problems: Sequence[str]) -> int:
    """The end of a dry run: print the problems a real launch would stop at; exit code 2 if any, else 0."""
    if problems:
        print("\nProblems that would stop this launch:\n" + "\n".join(f"  - {p}" for p in problems))
        return 2
    return 0


def resolve_wait(wait: bool | None, mode: str) -> bool:
    """Whether a launch waits for its jobs: as asked (``--wait``), else only when they run here
    (local and debug jobs end with the launcher anyway; SLURM jobs outlive it)."""
    return wait if wait is not None else mode != "slurm"


def scheduler_problems(mode: str, local_hint: str = "run on this machine") -> list[str]:
    """The launch's scheduler problem, if any: SLURM mode needs ``sbatch`` on this machine.

    Shared by every launcher (train, eval, judge serve) and asked for the launch mode, not
    whether it is a dry run: a dry run must report what would stop the real launch, not plan
    jobs that could never be submitted.
    """
    if mode == "slurm" and not sbatch_available():
        return [f"sbatch not found: run from a SLURM login node, or pass --local to {local_hint}"]
    return []


def check_output_root(cfg: Config, create: bool) -> list[str]:
    """The output root must be writable; a dry run (``create=False``) checks without creating anything."""
    raw = cfg.cluster.output_root
    if "$" in os.path.expandvars(raw):
        return [f"cluster.output_root={raw}: uses an environment variable that is not set here"]
    root = paths.output_root(raw)
    if not create:
        probe_dir = root
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            return [f"cluster.output_root={raw}: {probe_dir} is a file, not a directory; set cluster.output_root"]
        if not os.access(probe_dir, os.W_OK):
            return [f"cluster.output_root={raw}: {probe_dir} is not writable; set cluster.output_root"]
        return []
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [f"cluster.output_root={raw}: not writable ({exc.strerror}); "
                "set cluster.output_root to a directory on the shared filesystem"]
    return []


def prepare_builtin_data(cfg: Config) -> None:
    """Write the builtin debug datasets when the config uses them (deterministic, idempotent)."""
    if cfg.data.root == BUILTIN_DEBUG_DATA:
        write_debug_datasets(data_root(cfg), n_per_file=cfg.data.debug_examples_per_file, seed=cfg.data.split_seed)
    elif cfg.data.root == BUILTIN_ORGANISM:
        write_organism_datasets(data_root(cfg), n_per_file=cfg.data.debug_examples_per_file, seed=cfg.data.split_seed)


def prepare_inputs(cfg: Config, mode: str, dry_run: bool) -> bool:
    """Check the output root, then write the builtin debug data under it; True when it is usable.

    The root comes first: an unwritable one is a single line naming ``cluster.output_root``
    rather than a traceback from the data writer. A real launch raises :class:`PreflightError`
    there (with the scheduler's problem, so both are seen at once); a dry run writes nothing and
    leaves the root's problem to the pre-flight report.
    """
    problems = check_output_root(cfg, create=not dry_run)
    if problems:
        if not dry_run:
            raise PreflightError(problems + scheduler_problems(mode))
        return False
    prepare_builtin_data(cfg)
    return True


# ----------------------------------------------------------------------------------------------
# Training


def preflight(cfg: Config, runs: Sequence[Run], mode: str, dry_run: bool = False) -> list[str]:
    """Every reason the sweep cannot run, without submitting or training anything.

    ``mode`` is the launch mode (slurm, local, debug); ``dry_run`` checks without creating
    anything (``mode="dry-run"`` is the same as ``dry_run=True`` without a scheduler check).
    """
    dry_run = dry_run or mode == "dry-run"
    problems = scheduler_problems(mode)
    root_problems = check_output_root(cfg, create=not dry_run)
    problems += data_problems(cfg, runs, builtin_blocked=bool(root_problems))
    problems += root_problems
    problems += model_problems(cfg)
    # The trackers' packages, here rather than in the job after hours in the queue (tracker.require there).
    problems += tracker.missing(cfg.training.report_to)
    if cfg.training.deepspeed:
        problems += deepspeed_launch_problems(cfg)
    return problems


def data_problems(cfg: Config, runs: Sequence[Run], builtin_blocked: bool = False) -> list[str]:
    """Each run's data file must exist and parse (each file checked once). ``builtin_blocked``:
    the output root is unusable, so the builtin data written under it is not checked (the
    root's problem says it all)."""
    if builtin_blocked and cfg.data.root in (BUILTIN_DEBUG_DATA, BUILTIN_ORGANISM):
        return []
    problems: list[str] = []
    seen: set[str] = set()
    for run in runs:
        if run.data_file in seen:
            continue
        seen.add(run.data_file)
        if not Path(run.data_file).is_file():
            problems.append(
                f"{run.data_file}: data file not found (run {run.name}; data.root={cfg.data.root}, "
                f"data.levels[{run.level}]={cfg.data.levels[run.level]}): put the file there or set data.root=DIR"
            )
            continue
        try:
            read_chat_jsonl(run.data_file)
        except DataError as exc:
            problems.extend(exc.problems)
    return problems


def model_problems(cfg: Config) -> list[str]:
    """A local model directory must hold save_pretrained files."""
    name = cfg.model.name
    if name != BUILTIN_TINY_MODEL and (name.startswith((".", "/", "~")) or Path(name).expanduser().exists()):
        if not (Path(name).expanduser() / "config.json").is_file():
            return [f"model.name={name}: no config.json there (a local model needs save_pretrained files)"]
    return []


def deepspeed_launch_problems(cfg: Config) -> list[str]:
    """``training.deepspeed``: its config file (it may have changed since load_config) and DeepSpeed itself."""
    problems = deepspeed_problems(cfg.training)
    # Checked here, not on the GPU node after hours in the queue (found, not imported: an
    # import costs seconds and probes for accelerators on a login node).
    if importlib.util.find_spec("deepspeed") is None:
        problems.append(f"training.deepspeed={cfg.training.deepspeed}: DeepSpeed is not installed in this "
                        f"environment (pip install -e '.[deepspeed]'), or unset training.deepspeed")
    return problems


# ----------------------------------------------------------------------------------------------
# Evaluation


def eval_preflight(cfg: Config, mode: str) -> list[str]:
    """Problems that stop an eval launch: traits, judge credentials, the scheduler."""
    problems: list[str] = scheduler_problems(mode)
    try:
        load_traits(cfg)
    except ValueError as exc:
        problems.append(f"eval.traits: {exc}")
    if judge_needs_key(cfg.judge.judges) and not os.environ.get("OPENAI_API_KEY"):
        problems.append("judge: an openai judge without base_url needs OPENAI_API_KEY in the environment "
                        "(export OPENAI_API_KEY=...; jobs read it from their environment, it is never written "
                        "to configs or logs), or point judge.judges[].base_url at an OpenAI-compatible server")
    for label, var in judge_key_envs(cfg.judge.judges):
        if var != "OPENAI_API_KEY" and not os.environ.get(var):
            problems.append(f"judge {label}: api_key_env {var} is not set in the environment (export {var}=...; "
                            f"jobs read it from their environment, it is never written anywhere)")
    if mode != "in-job":  # inside a job the tasks wait for the server (judge.serve_wait_s)
        problems += serve_preflight(cfg)
    return problems


def eval_launch_problems(cfg: Config, mode: str, root_ok: bool) -> list[str]:
    """:func:`eval_preflight` for the launch mode (the real one in a dry run too: it reports a
    missing sbatch), plus the output root's problem when :func:`prepare_inputs` found one."""
    problems = eval_preflight(cfg, mode)
    if not root_ok:
        problems += check_output_root(cfg, create=False)
    return problems


def serve_preflight(cfg: Config) -> list[str]:
    """Every ``serve:<name>`` judge needs its server up, or its serve job queued (the eval tasks
    then wait up to judge.serve_wait_s for it)."""
    problems: list[str] = []
    for spec in cfg.judge.judges:
        url = spec.base_url or ""
        if not url.startswith(SERVE_PREFIX):
            continue
        name = url[len(SERVE_PREFIX):]
        state, detail = endpoint_state(cfg.cluster.output_root, name)
        if state in ("healthy", "starting"):
            continue
        problems.append(f"judge {spec.label}: base_url {url}: {detail}; start the server first: "
                        f"python launch/judge_serve.py --config {cfg.source or 'CONFIG'} --name {name}")
    return problems


def monitor_traits(cfg: Config, problems: list[str]) -> list[str]:
    """The monitor's watched traits; a bad ``monitor.traits`` is appended to ``problems`` (and none watched)."""
    try:
        return watched_traits(cfg)
    except ValueError as exc:
        problems.append(str(exc))
        return []
