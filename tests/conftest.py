"""Shared fixtures: the tiny model built once per session, and per-test output roots.

Tests run on CPU, offline, with the builtin tiny model (a few pretraining steps only: tests
check mechanics, not fluency).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from emt.core import paths

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
TINY_STEPS = 20  # pretraining steps of the test model (the demo uses the config's 300)
PY = sys.executable


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``models/`` directory holding the tiny model the debug config asks for."""
    from emt.builtin.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("shared")
    build_tiny_model(paths.builtin_model_dir(root, 0, TINY_STEPS), seed=0, pretrain_steps=TINY_STEPS)
    return root / "models"


@pytest.fixture
def out_root(tmp_path: Path, tiny_models: Path) -> Path:
    """A fresh output root that reuses the session's tiny model."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "models").symlink_to(tiny_models, target_is_directory=True)
    return root


def debug_overrides(root: Path, max_steps: int = 8, *extra: str) -> list[str]:
    """Overrides that make the debug config small and point it at ``root``."""
    return [f"cluster.output_root={root}", f"model.tiny_pretrain_steps={TINY_STEPS}",
            f"training.max_steps={max_steps}", *extra]


def launch_cmd(*args: str) -> list[str]:
    return [PY, str(REPO / "launch" / "train.py"), "--config", str(DEBUG_CONFIG), *args]


def train_and_kill(root: Path, run: str, checkpoints: int, *args: str, timeout: float = 300) -> Path:
    """Launch training (``--local --runs run`` plus ``args``), SIGKILL the launcher, the submitit
    controller and the job once ``run`` has ``checkpoints`` complete checkpoints; its directory."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(launch_cmd("--local", "--runs", run, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    found: Path | None = None
    while time.time() < deadline:
        dirs = list(root.glob(f"runs/{run}-*"))
        if dirs and len(paths.complete_checkpoints(dirs[0])) >= checkpoints:
            found = dirs[0]
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    assert found is not None, "no checkpoints appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    return found


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must never reach a model hub, and children inherit this.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


def require(module: str, why: str) -> None:
    """Import ``module`` or skip, except under CI where a missing part is a failure."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required under CI ({why}): {exc}")
        pytest.skip(f"{module} not installed: {why}", allow_module_level=True)  # also called at module level
