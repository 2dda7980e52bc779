"""One table for a whole sweep: jobs, training progress, scoring progress, failures.

Reads only what runs leave on disk (submission records, checkpoints, result files, scores.h5)
and asks the scheduler (sacct) for job states, so it works from any login node at any time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from emt.core import paths
from emt.core.config import Config, load_config
from emt.core.records import local_state, log_file, slurm_states
from emt.eval.consolidate import scores_up_to_date
from emt.eval.plan import eval_hash, eval_root, targets
from emt.launchers.plan import plan_runs
from emt.store.results import failed_summary, trait_means
from emt.sweep.runs import Run, build_sweep, run_state

FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


@dataclass
class RunStatus:
    run: Run
    train: str  # "complete" | "partial" | "missing"
    train_job: str  # "<id> <STATE>" or "-"
    step: int
    planned_steps: int | None
    checkpoints: int
    scored: int
    targets: int
    eval_jobs: str  # e.g. "4 COMPLETED, 1 FAILED" or "-"
    consolidated: str  # "yes" | "no" | "stale" (scores.h5 lacks a step, or a result differs in content)
    failed_logs: list[str] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)  # trait -> mean score at the newest scored step
    latest_step: int | None = None
    alerts: list[str] = field(default_factory=list)  # "evil@120 stop" per monitor alert
    monitor_job: str = "-"
    judge_failed: dict[int, str] = field(default_factory=dict)  # step -> what the judge lost (not scored)
    batch_waiting: list[int] = field(default_factory=list)  # steps submitted to the Batch API, not harvested yet


def _job_state(mode: str, folder: str, job_id: str, slurm: dict[str, str]) -> str:
    """A job's state: from sacct's answer (``slurm``) for SLURM jobs, from its process for local ones."""
    if mode == "slurm":
        return slurm.get(job_id, "UNKNOWN")
    if mode == "local":
        return local_state(Path(folder.replace("%j", job_id)), job_id)
    return "DEBUG"


def collect(cfg: Config, runs: Sequence[Run]) -> list[RunStatus]:
    """Status rows for ``runs`` (one sacct call for all of their jobs)."""
    records: dict[str, tuple[dict, dict]] = {}
    ids: list[str] = []
    for run in runs:
        tr = json.loads(paths.submission_file(run.path).read_text()) if paths.submission_file(run.path).is_file() else {}
        ev = json.loads(paths.eval_submission_file(run.path).read_text()) if paths.eval_submission_file(run.path).is_file() else {}
        records[run.name] = (tr, ev)
        for rec in (tr, ev):
            if rec.get("mode") == "slurm":
                ids += [str(rec[k]) for k in ("job_id", "consolidate_job_id") if rec.get(k)]
                ids += [str(j) for j in rec.get("array_job_ids", [])]
            if rec.get("monitor_job_id") and rec.get("monitor_mode", rec.get("mode")) == "slurm":
                ids.append(str(rec["monitor_job_id"]))
    slurm = slurm_states(ids)
    ehash = eval_hash(cfg)
    planned = {p.run.name: p.steps for p in plan_runs(cfg, runs)}
    out: list[RunStatus] = []
    for run in runs:
        tr, ev = records[run.name]
        state, n = run_state(run)
        ckpts = paths.complete_checkpoints(run.path)
        failed: list[str] = []
        train_job = "-"
        if tr.get("job_id"):
            st = _job_state(tr["mode"], tr["log_folder"], str(tr["job_id"]), slurm)
            train_job = f"{tr['job_id']} {st}"
            if st in FAILED:
                failed.append(f"train {tr['job_id']} {st}: {log_file(tr['log_folder'], str(tr['job_id']))}")
        eval_jobs = "-"
        if ev and ev.get("eval_hash") == ehash:
            counts: dict[str, int] = {}
            for jid in [*ev.get("array_job_ids", []), ev.get("consolidate_job_id")]:
                if not jid:
                    continue
                st = _job_state(ev["mode"], ev["log_folder"], str(jid), slurm)
                counts[st] = counts.get(st, 0) + 1
                if st in FAILED:
                    kind = "consolidate" if jid == ev.get("consolidate_job_id") else "eval task"
                    failed.append(f"{kind} {jid} {st}: {log_file(ev['log_folder'], str(jid))}")
            eval_jobs = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        tgt = targets(run) if ckpts else []
        root = eval_root(run, ehash)
        scored = sum(1 for s in tgt if paths.result_file(root, s).is_file())
        scores = paths.scores_file(run.path)
        consolidated = "no"
        if scores.is_file():
            consolidated = "yes" if tgt and scores_up_to_date(run, ehash) else "stale"
        monitor_job = "-"
        if tr.get("monitor_job_id"):
            mfolder = str(tr.get("monitor_log_folder") or tr.get("log_folder") or "")
            st = _job_state(tr.get("monitor_mode", tr.get("mode")), mfolder, str(tr["monitor_job_id"]), slurm)
            monitor_job = f"{tr['monitor_job_id']} {st}"
            if st in FAILED:
                failed.append(f"monitor {tr['monitor_job_id']} {st}: "
                              f"{log_file(mfolder, str(tr['monitor_job_id']))}")
        done = [s for s in tgt if paths.result_file(root, s).is_file()]
        latest = _result_scores(root, done[-1]) if done else {}
        judge_failed = {s: _judge_failed(paths.judge_failed_file(root, s)) for s in tgt
                        if s not in done and paths.judge_failed_file(root, s).is_file()}
        out.append(RunStatus(run, state, train_job, ckpts[-1][0] if ckpts else 0, planned.get(run.name), n,
                             scored, len(tgt), eval_jobs, consolidated, failed, latest, done[-1] if done else None,
                             _alerts(run), monitor_job, judge_failed,
                             [s for s in paths.judge_batch_steps(root) if s not in done]))
    return out


def _judge_failed(path: Path) -> str:
    """What a set-aside result's judges lost, in a few words."""
    try:
        return failed_summary(json.loads(path.read_text(encoding="utf-8"))["judge_failed"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path} unreadable"


def _result_scores(root: Path, step: int) -> dict[str, float]:
    """Mean trait scores of the result of ``step`` (the first judge's); {} if unreadable."""
    return trait_means(paths.result_file(root, step))


def _alerts(run: Run) -> list[str]:
    """Monitor alerts of a run as ``trait@onset_step action`` (plus the training job's stop, if it
    honoured one)."""
    out = []
    mdir = paths.monitor_dir(run.path)
    for f in sorted(mdir.glob("alert-*.json")) if mdir.is_dir() else []:
        try:
            a = json.loads(f.read_text())
            out.append(f"{a['trait']}@{a['onset_step']} {a['action']}")
        except (OSError, ValueError, KeyError):
            out.append(f"{f.name} unreadable")
    iv = paths.intervention_file(run.path)
    if iv.is_file():
        try:
            out.append(f"stopped@{json.loads(iv.read_text()).get('stopped_at_step')}")
        except (OSError, ValueError):
            pass
    return out


def _abbrev(trait: str) -> str:
    return trait[:4]


def format_table(rows: Sequence[RunStatus]) -> str:
    """The table launch/status.py prints, failed jobs' logs listed under it."""
    w = max([22] + [len(r.run.name) + 2 for r in rows])
    head = (f"{'run':<{w}}{'train':<10}{'train job':<22}{'step':>11}{'ckpts':>7}{'scored':>9}  {'eval jobs':<26}"
            f"{'h5':<6}{'latest scores':<28}{'alerts':<20}")
    lines = [head, "-" * len(head)]
    for r in rows:
        step = f"{r.step}/{r.planned_steps if r.planned_steps is not None else '?'}"
        latest = (f"@{r.latest_step} " + " ".join(f"{_abbrev(t)} {v:.0f}" for t, v in r.latest.items())) if r.latest else "-"
        scored = f"{r.scored}/{r.targets}" + ("!" if r.judge_failed else "+" if r.batch_waiting else "")
        lines.append(f"{r.run.name:<{w}}{r.train:<10}{r.train_job:<22}{step:>11}{r.checkpoints:>7}"
                     f"{scored:>9}  {r.eval_jobs:<26}{r.consolidated:<6}{latest:<28}"
                     f"{', '.join(r.alerts) or '-':<20}")
    monitors = [f"  {r.run.name}: monitor job {r.monitor_job}" for r in rows if r.monitor_job != "-"]
    if monitors:
        lines += ["", "Monitor jobs:"] + monitors
    waiting = [r for r in rows if r.batch_waiting]
    if waiting:
        # "+" after scored: answers generated, their judgements in Batch API batches.
        lines += ["", "Waiting for the Batch API (the run's consolidation job harvests them; rerun "
                      "launch/eval_array.py --run NAME if it is not running):"]
        lines += [f"  {r.run.name}: {len(r.batch_waiting)} checkpoint(s), steps {r.batch_waiting[:10]}"
                  + (" ..." if len(r.batch_waiting) > 10 else "") for r in waiting]
    judge = [r for r in rows if r.judge_failed]
    if judge:
        # Not scored: the judge lost these checkpoints' judgements (down, refusing, garbling).
        lines += ["", "Judge failed (not scored; rerun launch/eval_array.py --run NAME once the judge answers):"]
        for r in judge:
            steps = sorted(r.judge_failed)
            lines.append(f"  {r.run.name}: judge failed on {len(steps)} checkpoint(s), steps {steps}: "
                         f"{r.judge_failed[steps[0]]}")
    failed = [f for r in rows for f in r.failed_logs]
    if failed:
        lines += ["", "Failed jobs (logs):"] + [f"  {f}" for f in failed]
    return "\n".join(lines)


def _finite(value: float) -> float | None:
    """A score for JSON: NaN/inf (nothing scoreable) become null, which every JSON reader accepts."""
    return value if math.isfinite(value) else None


def row_json(r: RunStatus) -> dict[str, Any]:
    """One run's status as plain JSON values (the fields of the table, unabbreviated)."""
    return {
        "run": r.run.name, "domain": r.run.domain, "level": r.run.level, "seed": r.run.seed,
        "variant": r.run.variant, "hash": r.run.hash, "dir": r.run.run_dir,
        "train": r.train, "train_job": r.train_job, "step": r.step, "planned_steps": r.planned_steps,
        "checkpoints": r.checkpoints, "scored": r.scored, "targets": r.targets, "eval_jobs": r.eval_jobs,
        "consolidated": r.consolidated, "latest_step": r.latest_step,
        "latest": {t: _finite(float(v)) for t, v in r.latest.items()},
        "alerts": list(r.alerts), "monitor_job": r.monitor_job, "failed_logs": list(r.failed_logs),
        "judge_failed": {str(step): what for step, what in sorted(r.judge_failed.items())},
        "batch_waiting": list(r.batch_waiting),
    }


def status_json(cfg: Config, rows: Sequence[RunStatus]) -> dict[str, Any]:
    """``status --json``: the sweep's rows plus what identifies them (config, output root, eval hash)."""
    return {
        "config": str(cfg.source), "output_root": str(paths.output_root(cfg.cluster.output_root)),
        "eval_hash": eval_hash(cfg), "failed": status_code(rows) != 0,
        "runs": [row_json(r) for r in rows],
    }


def status_code(rows: Sequence[RunStatus]) -> int:
    """1 when a job failed or a judge lost judgements, else 0."""
    return 1 if any(r.failed_logs or r.judge_failed for r in rows) else 0


def sweep_status(config: str | Path, *, cluster: str | Path | None = None, overrides: Sequence[str] = (),
                 sweep: str = "all", runs: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 as_json: bool = False) -> int:
    """Print the status of a sweep (``runs``: only these run names), as the table or, with
    ``as_json``, as one JSON document on stdout; exit code 1 when a job failed."""
    cfg = load_config(config, overrides, cluster)
    rows = collect(cfg, build_sweep(cfg, sweep, list(runs) if runs else None, seeds))
    print(json.dumps(status_json(cfg, rows), indent=2) if as_json else format_table(rows))
    return status_code(rows)
