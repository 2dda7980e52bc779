"""Arguments every launcher shares: config, cluster profile, overrides, seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser(doc: str | None, default_config: Path) -> argparse.ArgumentParser:
    """A parser with the shared arguments; launchers add their own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.epochs=2")
    ap.add_argument("--config", default=str(default_config), help="sweep config YAML (default: %(default)s)")
    ap.add_argument("--cluster", default=None, help="cluster profile YAML (default: the config's 'cluster')")
    ap.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")
    return ap


def add_mode(ap: argparse.ArgumentParser) -> None:
    """--local / --debug (SLURM otherwise) and --wait."""
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run jobs on this machine (submitit LocalExecutor)")
    mode.add_argument("--debug", action="store_true", help="run jobs in this process (submitit DebugExecutor)")
    ap.add_argument("--wait", action="store_true", help="with SLURM, wait for the jobs to finish")


def mode_of(args: argparse.Namespace) -> str:
    return "local" if args.local else "debug" if args.debug else "slurm"
