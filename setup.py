"""Build hook: ship the repository's top-level configs/ inside the wheel, as emt/configs.

configs/ stays at the top of the repository (the launchers, docs and sbatch templates name it
there); an installed emt has no checkout, so the wheel carries a copy that
:func:`emt.core.paths.configs_dir` finds. A real copy rather than a symlink: symlinks do not
survive every sdist, wheel and filesystem. Everything else is declared in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"
# All of configs/ (configs, cluster profiles, DeepSpeed JSON, READMEs: what a config may
# reference by a relative path), less caches and editor/hidden files.
IGNORE = shutil.ignore_patterns("__pycache__", "*.py[cod]", ".*", "*~")


class BuildPyWithConfigs(build_py):
    """build_py that also copies configs/ to <build>/emt/configs (not in editable installs:
    there emt.core.paths finds the checkout's configs/ itself)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not CONFIGS.is_dir():  # an sdist built without MANIFEST.in's graft: fail, never ship a wheel without them
            raise FileNotFoundError(f"{CONFIGS} not found: the wheel must ship emt's configs (MANIFEST.in grafts them)")
        dest = Path(self.build_lib) / "emt" / "configs"
        if dest.exists():
            shutil.rmtree(dest)  # a stale copy from an earlier build never mixes with this one
        shutil.copytree(CONFIGS, dest, ignore=IGNORE)


setup(cmdclass={"build_py": BuildPyWithConfigs})
