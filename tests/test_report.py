"""The report: figures, report.md/.html, tidy.csv and the CLI scripts on synthetic runs with known onsets.

Runs are written through ``emt.store.consolidate`` (via ``write_synthetic_run``) so the HDF5
schema is the real one. Steps are 0, 2, 4, ... (one checkpoint = 2 steps); onsets are given as
checkpoint indices and expected back as steps within +-1 checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emt.analysis.report import NoScoresError, build_report, write_synthetic_run

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
# run name -> checkpoint index of each trait's step (None = never emerges)
RUNS = {
    "medical_mild": {"hallucination": 15, "evil": 20, "sycophancy": None},
    "medical_strong": {"hallucination": 8, "evil": 12, "sycophancy": 25},
    "math_mild": {"hallucination": 18, "evil": 24, "sycophancy": None},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output root with three scored runs; math_mild's sycophancy judge never gave a number."""
    root = tmp_path_factory.mktemp("out")
    for i, (name, onsets) in enumerate(RUNS.items()):
        write_synthetic_run(root / "runs" / f"{name}-a1b2c3d4", name, onsets, seed=i,
                            nan_traits=["sycophancy"] if name == "math_mild" else [])
    return root


@pytest.fixture(scope="module")
def report(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_report(root, tmp_path_factory.mktemp("report"))


def test_files_written(report: dict) -> None:
    for key in ("md", "html", "csv", "table_csv"):
        assert Path(report[key]).is_file(), key
    for name, ps in report["figures"].items():
        assert {p.suffix for p in ps} >= {".png", ".pdf"}, name
        assert all(p.stat().st_size > 1000 for p in ps)
    md = Path(report["md"]).read_text()
    assert "| run |" in md and "](trajectories_medical.png)" in md


def test_html_self_contained(report: dict) -> None:
    page = Path(report["html"]).read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "http://" not in page and "https://" not in page
    assert "foot" in page and "margin=10.0" in page and "penalty=5.0" in page  # method and its parameters
    assert "judge/model-a" in page and "0123456789ab" in page and "deadbeefcafe" in page  # provenance


def test_headline_onsets_and_lead(report: dict) -> None:
    t = report["table"].set_index("run")
    for name, onsets in RUNS.items():
        for trait, c in onsets.items():
            got = t.loc[name, f"onset_{trait}"]
            if c is None:
                assert pd.isna(got), (name, trait)
            else:
                assert abs(int(got) - 2 * c) <= 2, (name, trait, got)  # +-1 checkpoint
        lead = t.loc[name, "lead_checkpoints"]
        assert lead > 0 and abs(lead - (onsets["evil"] - onsets["hallucination"])) <= 2
    assert set(t["domain"]) == {"medical", "math"}


def test_tidy_csv(report: dict) -> None:
    df = pd.read_csv(report["csv"])
    assert {"run", "step", "trait", "score", "coherence", "train_loss", "heldout_loss"} <= set(df.columns)
    assert len(df) == 3 * 3 * 41  # runs x traits x checkpoints
    nan = df[(df.run == "math_mild") & (df.trait == "sycophancy")]
    assert nan.score.isna().all() and nan.coherence.notna().all()


def test_all_nan_trait_says_no_scores(report: dict) -> None:
    assert "no scores" in Path(report["md"]).read_text().lower()
    assert "math_mild/sycophancy" in Path(report["html"]).read_text()


def test_no_scores_error(tmp_path: Path) -> None:
    with pytest.raises(NoScoresError, match="launch/eval_array.py"):
        build_report(tmp_path / "empty", tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def test_cli_scripts(root: Path, tmp_path: Path) -> None:
    r = subprocess.run([PY, str(REPO / "analysis/report.py"), str(root), "--out", str(tmp_path / "rep"),
                        "--method", "threshold", "--no-figures"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "rep" / "report.html") in r.stdout
    r = subprocess.run([PY, str(REPO / "analysis/export.py"), str(root), "--out", str(tmp_path / "t.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path / "t.csv")) == 3 * 3 * 41
    r = subprocess.run([PY, str(REPO / "analysis/report.py"), str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "launch/eval_array.py" in r.stderr
