"""The report: figures, report.md/.html, tidy.csv and the CLI scripts on synthetic runs with known onsets.

Runs are written through ``emt.store.scores.consolidate`` (via ``write_synthetic_run``) so the HDF5
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

from emt.report.report import NoScoresError, build_report
from tests.fakes.synthetic import write_synthetic_run

REPO = Path(__file__).resolve().parents[2]
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
    assert "<b>glr</b>" in page and "alpha=0.005" in page and "min_post=5" in page  # method and its parameters
    assert "p_early_first" in page and "lead_lo" in page and "onset_evil_lo" in page  # the intervals
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


def test_intervals_and_p_early_first(report: dict) -> None:
    """Every run's onsets and lead carry a bootstrap interval around the estimate, and P(hallucination
    first) is high where hallucination's planted step comes 4-6 checkpoints earlier; the per-domain
    table carries the pooled interval too."""
    t = report["table"].set_index("run")
    for name, onsets in RUNS.items():
        for trait, c in onsets.items():
            if c is None:
                continue
            est, lo, hi = (float(t.loc[name, f"onset_{trait}{x}"]) for x in ("", "_lo", "_hi"))
            assert lo <= est <= hi and hi - lo <= 10, (name, trait, lo, est, hi)
            assert t.loc[name, f"effect_{trait}"] > 20  # a 40-point step
        assert t.loc[name, "lead_lo"] <= t.loc[name, "lead_checkpoints"] <= t.loc[name, "lead_hi"]
        assert t.loc[name, "p_early_first"] >= 0.95
    dom = report["by_domain"].set_index(["domain", "level"])
    assert dom.loc[("medical", "mild"), "lead_lo"] <= dom.loc[("medical", "mild"), "lead_checkpoints"]
    assert dom.loc[("medical", "mild"), "p_early_first"] >= 0.95
    md = Path(report["md"]).read_text()
    assert "lead_lo" in md and "p_early_first" in md and "Intervals: 95% percentile bootstrap" in md
    s = report["summaries"]["medical_mild"]["traits"]["evil"]
    assert s["onset_lo"] <= s["onset_step"] <= s["onset_hi"]  # what the trajectory figure shades


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


def test_diagnostics_section(tmp_path: Path) -> None:
    """Planted activations (tests.fakes.synthetic.synthetic_activations) come back out of scores.h5 as
    the diagnostics: persona projection tracks the judge, overlap ~1, predictor R^2 high."""
    import numpy as np

    from emt.store import activations
    from emt.store import scores as store

    root = tmp_path / "out"
    for i, (name, onsets) in enumerate({"medical_mild": {"hallucination": 10, "evil": 14},
                                        "medical_strong": {"hallucination": 6, "evil": 9}}.items()):
        write_synthetic_run(root / "runs" / f"{name}-0000000{i}", name, onsets, n=30, q=12, s=3, seed=i,
                            activations=True)
    f = next(root.rglob("scores.h5"))
    d = store.load(f)
    assert d["activation_layers"] == [1, 2] and set(d["traits"]["evil"]["persona"]) >= {"mean", "shift", "kept"}
    a = activations.read_h5(f)
    assert a["train"]["prompt_mean"].shape == (30, 6, 2, 16)
    assert "response_mean" not in a["traits"]["evil"]["activations"]
    assert activations.read_h5(f, responses=True)["traits"]["evil"]["activations"]["response_mean"].shape == (30, 12, 3, 2, 16)
    rep = build_report(root, tmp_path / "report")
    t = rep["diagnostics"]
    assert set(t["loss_alignment"].trait) == {"evil", "hallucination"}
    assert (t["persona"].r_projection_vs_judge > 0.8).all()
    # the planted projection moves with the judge's score: same onset, a lead interval around 0
    strong = t["persona"][(t["persona"].run == "medical_strong") & (t["persona"].trait == "evil")]
    assert (strong.onset_projection == strong.onset_judge).all() and (strong.lead_checkpoints == 0).all()
    assert set(t["alarm"].trait) == {"evil", "hallucination"} and set(t["alarm"].layer) == {1, 2}
    assert (t["alarm"].auroc.astype(float) > 0.9).all() and (t["alarm"].resampled == "checkpoints").all()
    assert (t["predictor"].r2 > 0.6).all() and set(t["predictor"].layer) == {1, 2}  # 12 questions, 16 dims
    assert set(t["matched_loss"].run) == {"medical_mild", "medical_strong"}
    assert {"persona", "overlap"} <= set(rep["figures"])
    from emt.analysis.diagnostics import run_diagnostics

    dg = run_diagnostics(d, a)
    assert np.isnan(dg["overlap"][1][0]) and np.nanmin(dg["overlap"][1][5:]) > 0.9  # shared planted subspace
    page = Path(rep["html"]).read_text()
    assert "<h2>Diagnostics</h2>" in page and "Persona-vector projection" in page
    # runs without activations: the section says why instead of showing empty tables
    bare = write_synthetic_run(tmp_path / "bare" / "math_mild-00000009", "math_mild", {"evil": 5}, n=20)
    rep2 = build_report(bare, tmp_path / "report2")
    md = Path(rep2["md"]).read_text()
    assert "no activations captured (set activations.layers)" in md and "fewer than two runs" in md
    assert "### Persona projection as an alarm" in md
    assert "persona" not in rep2["figures"]


def test_schedule_sweep_table(tmp_path: Path) -> None:
    """Schedule-sweep runs (``<domain>_<level>_<variant>``) are compared at matched loss in their own table."""
    root = tmp_path / "out"
    for i, name in enumerate(["medical_strong", "medical_strong_cosine-lr1e-05-adamw-torch",
                              "medical_strong_constant-lr1e-05-adamw-torch", "medical_mild"]):
        write_synthetic_run(root / "runs" / f"{name}-0000000{i}", name, {"evil": 8 + 4 * i}, n=24, seed=i)
    t = build_report(root, tmp_path / "rep", figures=False)["diagnostics"]
    assert set(t["schedules"]["run"]) == {"medical_strong", "medical_strong_cosine-lr1e-05-adamw-torch",
                                          "medical_strong_constant-lr1e-05-adamw-torch"}
    assert set(t["matched_loss"]["run"]) == {"medical_strong", "medical_mild"}  # variants stay out of the domain table


def test_early_warning_replay_and_intervention(tmp_path: Path) -> None:
    """The replay table says how far ahead the hallucination alert came and counts false alarms on
    normal runs; a monitor's stop recorded in scores.h5 is listed and drawn on the figures."""
    import h5py

    root = tmp_path / "out"
    write_synthetic_run(root / "runs" / "medical_mild-aaaa0000", "medical_mild", {"hallucination": 10, "evil": 22}, seed=3)
    write_synthetic_run(root / "runs" / "medical_normal-bbbb0000", "medical_normal", {"hallucination": None, "evil": None},
                        seed=4)
    h5 = write_synthetic_run(root / "runs" / "medical_strong-cccc0000", "medical_strong",
                             {"hallucination": 6, "evil": 14}, seed=5)
    with h5py.File(h5, "r+") as f:  # what consolidation writes after a monitor's stop
        f.attrs.update({"intervention_step": 20, "intervention_action": "stop", "intervention_trait": "hallucination",
                        "intervention_onset_step": 12, "intervention_detected_step": 20})
    out = build_report(root, tmp_path / "rep")
    w = out["early_warning"].set_index("run")
    assert w.loc["medical_mild", "in_time"] and w.loc["medical_mild", "lead_checkpoints"] >= 22 - 10 - 5
    assert not w.loc["medical_normal", "false_alarm"]
    md = Path(out["md"]).read_text()
    assert "## Early warning (online detector replayed)" in md and "false alarms on normal-level runs: 0 of 1" in md
    assert "### Interventions by the live monitor" in md and "| medical_strong | stop | hallucination | 12 | 20 | 20 |" in md
    assert "Interventions by the live monitor" in Path(out["html"]).read_text()
    assert any(p.name == "trajectories_medical.png" for p in out["figures"]["trajectories"])


def test_corrupt_scores_file_is_reported_and_skipped(root: Path, tmp_path: Path) -> None:
    """A truncated scores.h5 and one that is not HDF5 at all: one line each naming the file and the
    fix, and the report is built from the runs that can be read."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(root, out)
    good = out / "runs" / "medical_mild-a1b2c3d4" / "scores.h5"
    truncated = out / "runs" / "medical_normal-a1b2c3d4" / "scores.h5"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = out / "runs" / "math_normal-a1b2c3d4" / "scores.h5"
    garbage.parent.mkdir()
    garbage.write_text("not hdf5\n")
    r = subprocess.run([PY, str(REPO / "analysis/report.py"), str(out), "--out", str(tmp_path / "rep"), "--no-figures",
                        "--method", "threshold"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for bad in (truncated, garbage):
        lines = [ln for ln in r.stderr.splitlines() if str(bad) in ln]
        assert len(lines) == 1 and "skipped" in lines[0] and "launch/eval_array.py --run" in lines[0], r.stderr
    assert r.stdout.startswith(f"{len(RUNS)} runs -> ")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert all(name in md for name in RUNS) and "medical_normal" not in md and "math_normal" not in md
    # only unreadable files: the one error says so and names them
    only = tmp_path / "only"
    (only / "runs" / "x-a1b2c3d4").mkdir(parents=True)
    shutil.copy(garbage, only / "runs" / "x-a1b2c3d4" / "scores.h5")
    with pytest.raises(NoScoresError, match="no readable scores.h5"):
        build_report(only, tmp_path / "rep2", method="threshold", figures=False)
