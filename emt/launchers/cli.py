"""Arguments every launcher shares: config, cluster profile, overrides, seeds, mode, --json."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator, TextIO

from emt.core import paths


def config_arg(text: str) -> str:
    """--config: a YAML path, or the name of a shipped config (``paper``, ``debug``, ``organism``, ...)."""
    try:
        return str(paths.config_file(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cluster_arg(text: str) -> str:
    """--cluster: a profile YAML path, or the name of a shipped one (``local``, ``example-h100``)."""
    try:
        return str(paths.config_file(text, "cluster"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_common(ap: argparse.ArgumentParser, default_config: str | Path) -> None:
    """The shared arguments (overrides, --config, --cluster, --seeds) on ``ap``; ``default_config``
    is a shipped config's name (``paper``) or a path."""
    names = ", ".join(paths.config_names()) or "none found"
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.epochs=2")
    ap.add_argument("--config", type=config_arg, default=str(default_config),
                    help=f"sweep config: a YAML path or a shipped config's name ({names}; default: "
                         f"{default_config})")
    ap.add_argument("--cluster", type=cluster_arg, default=None,
                    help="cluster profile: a YAML path or a shipped profile's name "
                         f"({', '.join(paths.config_names('cluster')) or 'none found'}; default: the config's 'cluster')")
    ap.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")


def add_mode(ap: argparse.ArgumentParser) -> None:
    """--local / --debug (SLURM otherwise) and --wait."""
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run jobs on this machine (submitit LocalExecutor)")
    mode.add_argument("--debug", action="store_true", help="run jobs in this process (submitit DebugExecutor)")
    ap.add_argument("--wait", action="store_true", help="with SLURM, wait for the jobs to finish")


def mode_of(args: argparse.Namespace) -> str:
    return "local" if args.local else "debug" if args.debug else "slurm"


def add_json(ap: argparse.ArgumentParser, what: str, needs_dry_run: bool = False) -> None:
    """--json: ``what`` as one JSON document on stdout (``needs_dry_run``: only with --dry-run)."""
    ap.add_argument("--json", action="store_true",
                    help=("with --dry-run, " if needs_dry_run else "") +
                         f"{what} as one JSON document on stdout; everything else goes to stderr")


@contextlib.contextmanager
def json_stdout(on: bool) -> Iterator[TextIO | None]:
    """With ``on`` (--json): the real stdout, for the JSON document alone, while every other
    print goes to stderr, so that stdout always parses; without it, None and stdout unchanged."""
    if not on:
        yield None
        return
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield out
