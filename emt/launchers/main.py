"""The ``emt`` command: one installed entry point with a subcommand per launcher.

    emt train --config debug --local                  # tiny model, this machine
    emt train --sweep medical --dry-run               # the plan (paper config), submit nothing
    emt train --sweep medical --dry-run --json        # the plan and its cost, machine-readable
    emt eval --all --local --config debug             # score every checkpoint, then consolidate
    emt follow --runs medical_strong --config debug --local   # monitor a run while it trains
    emt status --json                                 # the sweep's state, machine-readable
    emt serve --config judge-serve --name qwen-judge  # a judge served on the cluster
    emt report outputs                                # -> outputs/report/report.html
    emt export outputs --out tidy.parquet             # the per-step table

``--config`` takes a YAML path or the name of a shipped config (paper, debug, organism,
judge-serve; the wheel carries them as emt/configs). The scripts under launch/ and analysis/
take the same arguments: `emt COMMAND --help` describes both.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import emt
from emt.analysis.onset import DEFAULT_METHOD, METHODS
from emt.core import atomic
from emt.core.config import ConfigError
from emt.core.logs import setup_logging
from emt.launchers.cli import add_common, add_json, add_mode, json_stdout, mode_of
from emt.launchers.evaluate import eval_in_job, eval_runs, follow_runs
from emt.launchers.serve import judge_serve
from emt.launchers.status import sweep_status
from emt.launchers.train import train_sweep
from emt.report.report import NoScoresError, build_report, find_scores, load_runs, tidy_frame
from emt.sweep.data import DataError

PAPER = "paper"  # the shipped configs' names (emt.core.paths.config_file resolves them)
JUDGE_SERVE = "judge-serve"
Runner = Callable[[argparse.ArgumentParser, argparse.Namespace], int]


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list of run names (None when not given)."""
    return [n for n in text.split(",") if n.strip()] if text else None


def _tasks(text: str) -> int | str:
    """--tasks: a positive number, or auto."""
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a number of tasks >= 1 or 'auto', got {text!r}")
    return k


def _errors(fn: Runner) -> Runner:
    """Input problems (config, data, preflight, selection) as ``error: ...`` and exit code 2."""
    def run(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
        try:
            return fn(ap, args)
        except (ConfigError, DataError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    run.__doc__ = fn.__doc__
    return run


# --- train ----------------------------------------------------------------------------------------

def add_train(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt train`` / launch/train.py."""
    add_common(ap, PAPER)
    ap.add_argument("--sweep", default="all",
                    help="all | a domain | a level | a run name | schedules (the learning-schedule sweep; default: all)")
    ap.add_argument("--runs", default=None, help="comma-separated run names to keep, e.g. medical_mild,math_strong")
    add_mode(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the problems; submit nothing")
    add_json(ap, "the plan (runs, hashes, actions, paths) and the cost plan", needs_dry_run=True)
    ap.add_argument("--monitor", action="store_true",
                    help="submit a monitor job beside each training job: scores checkpoints as they appear, "
                         "alerts on trait onsets and applies monitor.actions (stop/rollback/mark)")


@_errors
def run_train(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Plan, check and submit the sweep's training jobs (:func:`emt.launchers.train.train_sweep`)."""
    setup_logging()
    with json_stdout(args.json) as out:
        return train_sweep(args.config, cluster=args.cluster, overrides=args.overrides, sweep=args.sweep,
                           runs=_names(args.runs), seeds=args.seeds, mode=mode_of(args), dry_run=args.dry_run,
                           wait=True if args.wait else None, monitor=args.monitor, json_out=out)


# --- eval and follow ------------------------------------------------------------------------------

def _add_selection(ap: argparse.ArgumentParser) -> None:
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--runs", "--run", dest="run", metavar="NAMES",
                       help="run name(s), comma-separated, e.g. medical_mild")
    which.add_argument("--all", action="store_true", help="every run of the sweep")


def add_eval(ap: argparse.ArgumentParser, follow_flag: bool = False) -> None:
    """Arguments of ``emt eval`` (and, with ``follow_flag``, of launch/eval_array.py, whose
    ``--follow`` is ``emt follow``). --task-index and --consolidate-only are for the plain sbatch
    templates' jobs: they work, hidden from --help."""
    add_common(ap, PAPER)
    _add_selection(ap)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--per-task", type=int, default=None, help="checkpoints per array task")
    size.add_argument("--tasks", type=_tasks, default=None,
                      help="number of array tasks, or auto: from the checkpoints to score, the cost of one "
                           "(eval.checkpoint_cost_s, or earlier tasks' timings), cluster.array_parallelism "
                           "and cluster.eval.time_min")
    add_mode(ap)
    ap.add_argument("--dry-run", action="store_true", help="print what would be scored; submit nothing")
    add_json(ap, "the plan (per run the checkpoints scored, the tasks scoring the rest) and the cost plan",
             needs_dry_run=True)
    if follow_flag:
        ap.add_argument("--follow", action="store_true",
                        help="submit a monitor job per run instead of an array: it scores checkpoints as training "
                             "writes them, detects onsets online and runs monitor.actions (see configs/*.yaml monitor:)")
    stage = ap.add_mutually_exclusive_group()
    stage.add_argument("--task-index", type=int, default=None, help=argparse.SUPPRESS)  # slurm/eval.sbatch
    stage.add_argument("--consolidate-only", action="store_true", help=argparse.SUPPRESS)  # slurm/consolidate.sbatch


@_errors
def run_eval(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Score the runs' checkpoints (:func:`eval_runs`), one stage inside a job (:func:`eval_in_job`),
    or, from launch/eval_array.py --follow, follow them (:func:`run_follow`)."""
    if getattr(args, "follow", False):
        if args.task_index is not None or args.consolidate_only:
            ap.error("--follow submits a monitor job; --task-index/--consolidate-only run a stage inside a job")
        if args.per_task or args.tasks:
            ap.error("--follow scores checkpoints as they appear; --per-task/--tasks size an array")
        return run_follow(ap, args)
    setup_logging()
    if args.task_index is not None or args.consolidate_only:
        if args.all:
            ap.error("--task-index/--consolidate-only take --run NAME")
        if args.json:
            ap.error("--json prints the eval array's plan (with --dry-run), not a job stage's output")
        return eval_in_job(args.config, cluster=args.cluster, overrides=args.overrides,
                           run_names=_names(args.run) or [], seeds=args.seeds, task_index=args.task_index,
                           tasks=args.tasks)
    with json_stdout(args.json) as out:
        return eval_runs(args.config, cluster=args.cluster, overrides=args.overrides,
                         run_names=None if args.all else _names(args.run), seeds=args.seeds,
                         per_task=args.per_task, tasks=args.tasks, mode=mode_of(args),
                         dry_run=args.dry_run, wait=True if args.wait else None, json_out=out)


def add_follow(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt follow``."""
    add_common(ap, PAPER)
    _add_selection(ap)
    add_mode(ap)
    ap.add_argument("--dry-run", action="store_true", help="print what each monitor would watch; submit nothing")
    add_json(ap, "the plan (per run its state, checkpoints scored, whether a monitor is submitted)",
             needs_dry_run=True)


@_errors
def run_follow(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A monitor job per run (:func:`emt.launchers.evaluate.follow_runs`)."""
    setup_logging()
    with json_stdout(args.json) as out:
        return follow_runs(args.config, cluster=args.cluster, overrides=args.overrides,
                           run_names=None if args.all else _names(args.run), seeds=args.seeds,
                           mode=mode_of(args), dry_run=args.dry_run, wait=True if args.wait else None,
                           json_out=out)


# --- status ---------------------------------------------------------------------------------------

def add_status(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt status`` / launch/status.py."""
    add_common(ap, PAPER)
    ap.add_argument("--sweep", default="all", help="all | a domain | a level | a run name (default: all)")
    ap.add_argument("--runs", default=None, help="comma-separated run names to show, e.g. medical_mild,math_strong")
    add_json(ap, "the status table")


@_errors
def run_status(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The sweep's status table or JSON (:func:`emt.launchers.status.sweep_status`)."""
    setup_logging()
    return sweep_status(args.config, cluster=args.cluster, overrides=args.overrides, sweep=args.sweep,
                        runs=_names(args.runs), seeds=args.seeds, as_json=args.json)


# --- serve ----------------------------------------------------------------------------------------

def add_serve(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt serve`` / launch/judge_serve.py; --in-job (slurm/judge-serve.sbatch) is hidden."""
    add_common(ap, JUDGE_SERVE)
    ap.add_argument("--name", required=True, help="the judge.servers entry to serve")
    add_mode(ap)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the server command and the job; submit nothing")
    what.add_argument("--stop", action="store_true", help="cancel the server's job")
    what.add_argument("--in-job", action="store_true", help=argparse.SUPPRESS)  # serve inside an sbatch job


@_errors
def run_serve(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Start, stop or plan a judge server (:func:`emt.launchers.serve.judge_serve`)."""
    setup_logging()
    return judge_serve(args.config, name=args.name, cluster=args.cluster, overrides=args.overrides,
                       mode=mode_of(args), dry_run=args.dry_run, stop=args.stop, in_job=args.in_job,
                       wait=True if args.wait else None)


# --- report and export ----------------------------------------------------------------------------

def add_report(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt report`` / analysis/report.py."""
    ap.add_argument("dir", type=Path, help="output root, its runs/ directory, or one run directory")
    ap.add_argument("--out", type=Path, default=None, help="report directory (default: <dir>/report)")
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help="onset method (default %(default)s)")
    ap.add_argument("--no-figures", action="store_true", help="tables, markdown, HTML and CSV only")
    ap.add_argument("--n-boot", type=int, default=1000,
                    help="bootstrap replicates for the onset and lead-time intervals (0: none; default %(default)s)")


def run_report(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Build the study report (:func:`emt.report.report.build_report`)."""
    out = args.out if args.out is not None else args.dir / "report"
    try:
        paths = build_report(args.dir, out, method=args.method, figures=not args.no_figures, n_boot=args.n_boot)
    except NoScoresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths['runs'])} runs -> {paths['html']}")
    print(f"markdown: {paths['md']}\ntidy CSV: {paths['csv']}")
    return 0


def add_export(ap: argparse.ArgumentParser) -> None:
    """Arguments of ``emt export`` / analysis/export.py."""
    ap.add_argument("dir", type=Path, help="output root, its runs/ directory, or one run directory")
    ap.add_argument("--out", type=Path, default=Path("tidy.csv"), help=".csv or .parquet (default %(default)s)")


def run_export(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Every run's scores as one tidy table (:func:`emt.report.report.tidy_frame`), to CSV or parquet."""
    if args.out.suffix not in (".csv", ".parquet"):  # before reading anything: a typo costs nothing
        print(f"error: --out must end in .csv or .parquet, got {args.out}", file=sys.stderr)
        return 2
    if args.out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("error: writing .parquet needs pyarrow, which is not installed (pip install pyarrow); "
                  "use --out <file>.csv instead", file=sys.stderr)
            return 2
    try:
        runs = load_runs(find_scores(args.dir))
    except NoScoresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    df = tidy_frame(runs)
    with atomic.atomic_path(args.out, suffix=args.out.suffix) as tmp:
        if args.out.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    print(f"{len(runs)} runs, {len(df)} rows -> {args.out}")
    return 0


# --- the command ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, its arguments, what it runs."""

    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Runner


COMMANDS: dict[str, Command] = {
    "train": Command("plan, check and submit a sweep's training jobs (launch/train.py)", add_train, run_train),
    "eval": Command("score every checkpoint of runs: an eval array, then consolidation into scores.h5 "
                    "(launch/eval_array.py)", add_eval, run_eval),
    "follow": Command("a monitor job per run: score checkpoints while training runs, alert on onsets "
                      "(launch/eval_array.py --follow)", add_follow, run_follow),
    "status": Command("one table (or --json) of a sweep's jobs, training and scoring progress, failures "
                      "(launch/status.py)", add_status, run_status),
    "serve": Command("serve a judge model with vllm serve, for judges with base_url serve:<name> "
                     "(launch/judge_serve.py)", add_serve, run_serve),
    "report": Command("build the study report from every scores.h5 under a directory (analysis/report.py)",
                      add_report, run_report),
    "export": Command("export every run's per-step scores as one tidy CSV or parquet table (analysis/export.py)",
                      add_export, run_export),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``emt`` parser and each subcommand's parser."""
    ap = argparse.ArgumentParser(prog="emt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"emt {emt.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help[:1].upper() + cmd.help[1:] + ".",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add(sp)
        parsers[name] = sp
    return ap, parsers


def main(argv: Sequence[str] | None = None) -> int:
    """The ``emt`` console script; returns the subcommand's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap, parsers = build_parser()
    if not argv or argv[0] not in COMMANDS:
        ap.parse_args(argv)  # --help, --version, or an error naming the valid commands: exits
        return 2
    # Each subcommand parses on its own parser: argparse's intermixed parsing (overrides before
    # and after options, as the launch/ scripts allow) does not work through subparsers.
    sp = parsers[argv[0]]
    return COMMANDS[argv[0]].run(sp, sp.parse_intermixed_args(argv[1:]))


def script_parser(name: str, doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of a launch/ or analysis/ script: the subcommand ``name``'s arguments, the
    script's docstring as description (launch/eval_array.py also keeps ``--follow``)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if name == "eval":
        add_eval(ap, follow_flag=True)
    else:
        COMMANDS[name].add(ap)
    return ap


def script_main(name: str, doc: str | None, argv: Sequence[str] | None = None) -> int:
    """What a launch/ or analysis/ script's main() runs: the same code as ``emt <name>``."""
    ap = script_parser(name, doc)
    return COMMANDS[name].run(ap, ap.parse_intermixed_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
