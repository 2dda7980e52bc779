"""Whether a run's scores.h5 is current is decided by the content of its result files
(``results_digest``), not their times: a copied output root stays current, a result rewritten
since the consolidation is stale whatever its time, and a scores.h5 written before the digest
existed falls back to times. No model runs: result files in the evaluation format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import h5py

from emt.core import atomic, paths
from tests.conftest import DEBUG_CONFIG
from tests.fakes.synthetic import write_synthetic_run


def _run(root: Path) -> Any:
    from emt.core.config import load_config
    from emt.sweep.runs import build_sweep

    cfg = load_config(DEBUG_CONFIG, [f"cluster.output_root={root}", "activations.layers=[]"])
    return build_sweep(cfg, "all", runs=["medical_mild"])[0]


def _age(path: Path, seconds: float) -> None:
    """Move a file's times ``seconds`` into the past (a copy or restore reorders times like this)."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def _consolidated(run: Any) -> str:
    from emt.launchers.status import collect

    [row] = collect(run.config, [run])
    return row.consolidated


def test_staleness_follows_content_not_times(tmp_path: Path) -> None:
    from emt.eval.consolidate import consolidate_run, scores_up_to_date
    from emt.eval.plan import eval_hash, eval_root

    run = _run(tmp_path / "out")
    ehash = eval_hash(run.config)
    atomic.write_json(paths.checkpoint_marker(paths.checkpoint_dir(run.path, 2)),
                      {"step": 2, "train_loss": 1.5, "heldout_loss": 1.6})
    src = write_synthetic_run(tmp_path / "synthetic", "medical_mild", {"evil": 1}, n=2)
    root = eval_root(run, ehash)
    root.mkdir(parents=True)
    for s in (0, 2):
        shutil.copy(src.parent / "eval-synthetic" / f"step-{s}.json", paths.result_file(root, s))
    consolidate_run(run, ehash)
    scores = paths.scores_file(run.path)
    with h5py.File(scores, "r") as f:
        assert len(f.attrs["results_digest"]) == 64
    assert scores_up_to_date(run, ehash)

    # A copied output root whose scores.h5 ends up older than its result files: still current.
    shutil.copytree(tmp_path / "out", tmp_path / "copy", copy_function=shutil.copy)
    copy = _run(tmp_path / "copy")
    _age(paths.scores_file(copy.path), 3600)
    assert scores_up_to_date(copy, ehash)
    assert _consolidated(copy) == "yes"  # what launch/status.py shows

    # A result rewritten since, with the scores.h5 newer than it: stale (by content).
    f2 = paths.result_file(eval_root(copy, ehash), 2)
    res = json.loads(f2.read_text())
    res["traits"]["evil"]["scores"]["judge/model-a"][0][0] = 99.0
    f2.write_text(json.dumps(res))
    _age(f2, 7200)
    assert not scores_up_to_date(copy, ehash)
    assert _consolidated(copy) == "stale"
    # ... and a consolidation then rewrites it (it is not skipped as up to date)
    assert not consolidate_run(copy, ehash).get("skipped")
    assert scores_up_to_date(copy, ehash)

    # A scores.h5 from before the digest: file times decide, as they did.
    with h5py.File(scores, "a") as f:
        del f.attrs["results_digest"]
    assert scores_up_to_date(run, ehash)
    _age(scores, 3600)
    assert not scores_up_to_date(run, ehash)
