"""emt.core.atomic and emt.core.paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from emt.core import atomic, paths


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.json"
    atomic.write_json(p, {"a": 1})
    atomic.write_json(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    assert [x.name for x in p.parent.iterdir()] == ["f.json"]


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic.write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_directory_replace(tmp_path: Path) -> None:
    d = tmp_path / "model"
    for content in ("one", "two"):
        with atomic.atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "w").write_text(content)
    assert (d / "w").read_text() == "two" and [x.name for x in tmp_path.iterdir()] == ["model"]


def test_complete_checkpoints_need_marker(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for s in (2, 4, 10):
        paths.checkpoint_dir(run, s).mkdir(parents=True)
    (run / "checkpoint-x").mkdir()
    for s in (2, 10):
        atomic.write_json(paths.checkpoint_marker(paths.checkpoint_dir(run, s)), {"step": s})
    assert [s for s, _ in paths.all_checkpoint_dirs(run)] == [2, 4, 10]
    assert [s for s, _ in paths.complete_checkpoints(run)] == [2, 10]


def test_output_root_expands_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMT_TEST_ROOT", str(tmp_path))
    assert paths.output_root("$EMT_TEST_ROOT/x") == tmp_path / "x"
    assert paths.run_dir(tmp_path, "medical_mild", "abcd1234") == tmp_path / "runs" / "medical_mild-abcd1234"
