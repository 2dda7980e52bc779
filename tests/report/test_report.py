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
    [line] = [w for w in report["warnings"]["headline"] if "sycophancy has no score at any checkpoint" in w]
    assert line.endswith("(math_mild).")
    head = _section(Path(report["html"]).read_text(), "Headline table (per run)")
    assert "sycophancy has no score at any checkpoint" in head  # beside the table it affects


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
    assert "<h2 id='diagnostics'>Diagnostics</h2>" in page and "Persona-vector projection" in page
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


# ---------------------------------------------------------------------------------------------
# a report that explains itself (issue 18): each test fails if its defect comes back


def _section(page: str, title: str) -> str:
    """The HTML between the heading titled ``title`` and the next heading of the same or a higher level."""
    m = re.search(r"<h([23]) id='[^']*'>" + re.escape(title.replace("'", "&#x27;")) + "</h[23]>", page)
    assert m, f"no heading {title!r}"
    rest = page[m.end():]
    nxt = re.search(r"<h[2-%s] id=" % m.group(1), rest)
    return rest[: nxt.start() if nxt else len(rest)]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two runs on a built-in model in which nothing emerges, with what the runs warn about planted:
    the base model scores highest on evil at step 0, hallucination has no persona vector (the reason
    recorded as consolidation records it), evil's vector rests on 2 of 40 pairs, the predictor has
    12 questions."""
    import json

    import h5py

    root = tmp_path_factory.mktemp("flat")
    for i, name in enumerate(["medical_normal", "medical_strong"]):
        h5 = write_synthetic_run(root / "runs" / f"{name}-0000000{i}", name, {"hallucination": None, "evil": None},
                                 n=30, q=12, s=3, seed=10 + i, activations=True)
        with h5py.File(h5, "r+") as f:
            f.attrs["model"] = "builtin:tiny"
            f.attrs["judge_models"] = json.dumps(["builtin:tiny-judge"])
            f.attrs["persona_skipped"] = json.dumps({"hallucination": "no confirmed (pos, neg) pair: PLANTED REASON"})
            del f["traits/hallucination/persona"]
            f["traits/evil/persona"].attrs.update({"kept": 2, "pairs": 40})
            ds = f["traits/evil/judges/judge_model-a/score"]  # what traits/evil/score links to
            sc = ds[()]
            sc[0] = 95.0  # the base model's score: no peak of fine-tuning
            ds[...] = sc
    out = build_report(root, tmp_path_factory.mktemp("flat_report"), n_boot=50)
    out["root"] = root
    return out


def test_no_onset_says_so_with_method_and_parameters(flat: dict, report: dict) -> None:
    """Nothing detected: one line says so, naming the method, its parameters and what "–" means;
    with onsets, the line counts them instead."""
    assert flat["table"]["onset_evil"].isna().all() and flat["table"]["onset_hallucination"].isna().all()
    for page in (Path(flat["md"]).read_text(), Path(flat["html"]).read_text()):
        assert "No onset was found in any run: the onset method glr (alpha=0.005, min_pre=5, min_post=5" in page
        assert "means no onset was found" in page and "neither a zero nor missing data" in page
    head = _section(Path(flat["html"]).read_text(), "Headline table (per run)")
    assert head.index("No onset was found") > head.index("</table>")  # right under the table
    md = Path(report["md"]).read_text()
    assert "Onsets found by glr" in md and "evil in 3 of 3" in md and "No onset was found in any run" not in md
    assert "means no onset was found" in md  # sycophancy has none in two runs: "–" is explained


def test_peak_is_after_step_0_with_its_step(flat: dict) -> None:
    """The base model's score (95 at step 0 here) is never the peak; the peak's step is shown."""
    from emt.store import scores as store

    t = flat["table"].set_index("run")
    for name in ("medical_normal", "medical_strong"):
        d = store.load(next(flat["root"].rglob(f"{name}-*/scores.h5")), strings=False)
        y, s = d["traits"]["evil"]["score"], d["steps"]
        assert t.loc[name, "step0_evil"] == 95.0
        assert t.loc[name, "peak_evil"] == pytest.approx(float(y[1:].max())) and t.loc[name, "peak_evil"] < 95.0
        assert t.loc[name, "peak_evil_step"] == int(s[1:][y[1:].argmax()]) > 0
    md = Path(flat["md"]).read_text()
    assert "peak_evil_step (step)" in md and "highest mean score after step 0" in md


def test_builtin_model_banner(flat: dict, report: dict) -> None:
    page = Path(flat["html"]).read_text()
    [banner] = re.findall(r"<div class='banner'>(.*?)</div>", page)
    assert "builtin:tiny" in banner and "not how a real LLM behaves" in banner and "mechanics" in banner
    assert page.index("class='banner'") < page.index("<nav class='toc'>")  # before anything else
    assert "not how a real LLM behaves" in Path(flat["md"]).read_text()
    assert "class='banner'" not in Path(report["html"]).read_text()  # a non-builtin model: no banner
    from emt.report.report import builtin_banner

    org = builtin_banner([{"attrs": {"model": "builtin:organism", "judge_models": '["builtin:organism-judge"]'}}])
    assert "model organism" in org and "the organism's behaviour, not how a real LLM behaves" in org
    assert builtin_banner([{"attrs": {"model": "Qwen/Qwen2.5-7B-Instruct"}}]) == ""


def test_run_warnings_beside_what_they_affect(flat: dict) -> None:
    """A persona vector not built (with the recorded reason), one from 2 of 40 pairs, a ridge fit on 12
    questions: each warning sits in the section of the table it affects, once for both runs."""
    page = Path(flat["html"]).read_text()
    persona = _section(page, "Persona-vector projection vs judge score")
    assert "No persona vector for hallucination" in persona and "PLANTED REASON" in persona
    assert "rests on 2 of 40 (pos, neg) answer pairs" in persona and "(all 2 runs)" in persona
    assert persona.index("class='warn'") < persona.index("<table")
    predictor = _section(page, "Activation-based predictor (R^2 of ridge, out of fold)")
    assert "rest on few questions" in predictor and "12 questions, fewer than 20" in predictor
    assert "PLANTED REASON" not in predictor and "rest on few questions" not in persona
    assert len(flat["warnings"]["persona"]) == 2
    assert "warning(s) from the runs are shown beside the tables they affect" in page
    md = Path(flat["md"]).read_text()
    assert "> - No persona vector for hallucination" in md


def test_persona_not_built_without_a_record_still_warns(flat: dict, tmp_path: Path) -> None:
    """A scores.h5 written before the reason was recorded: the warning says the vector is missing and
    where the reason is."""
    import shutil

    import h5py

    root = tmp_path / "old"
    src = next(flat["root"].rglob("medical_strong-*/scores.h5"))
    (root / "medical_strong-00000001").mkdir(parents=True)
    shutil.copy(src, root / "medical_strong-00000001" / "scores.h5")
    with h5py.File(root / "medical_strong-00000001" / "scores.h5", "r+") as f:
        del f.attrs["persona_skipped"]
    out = build_report(root, tmp_path / "rep", n_boot=0, figures=False)
    [w] = [w for w in out["warnings"]["persona"] if "hallucination" in w]
    assert "not recorded in this scores.h5" in w and "persona vector ... not built" in w


def test_no_empty_lead_figure_and_no_early_zoom_of_short_runs(flat: dict, report: dict) -> None:
    """No run with a lead under any method: no lead-time figure (a row of "n/a" bars), a sentence
    instead; runs no longer than 100 steps: no "first 100 steps" figure."""
    out = Path(flat["html"]).parent
    assert "lead_times" not in flat["figures"] and not (out / "lead_times.png").exists()
    assert "No lead-time figure: no onset method found both" in Path(flat["md"]).read_text()
    assert "early_zoom" not in flat["figures"] and "early_zoom" not in report["figures"]  # 58 and 80 steps
    assert 'No "first 100 steps" figure: every run ends by step 58' in Path(flat["md"]).read_text()
    assert "lead_times" in report["figures"]  # leads exist there


def test_early_zoom_only_for_runs_longer_than_100_steps(tmp_path: Path) -> None:
    from emt.report.figures import EARLY_ZOOM_STEPS, plot_all
    from emt.store import scores as store

    short = store.load(write_synthetic_run(tmp_path / "s" / "medical_mild-00000001", "medical_mild", {"evil": 5}, n=51))
    long = store.load(write_synthetic_run(tmp_path / "l" / "medical_strong-00000002", "medical_strong", {"evil": 5}, n=52))
    assert short["steps"][-1] == EARLY_ZOOM_STEPS and long["steps"][-1] > EARLY_ZOOM_STEPS
    assert "early_zoom" not in plot_all([short], tmp_path / "f1")
    assert "early_zoom" in plot_all([short, long], tmp_path / "f2")


def test_table_of_contents_units_scrolling_and_captions(report: dict) -> None:
    page = Path(report["html"]).read_text()
    toc = re.search(r"<nav class='toc'>(.*?)</nav>", page).group(1)
    links = re.findall(r"href='#([^']+)'", toc)
    ids = re.findall(r"<h[23] id='([^']+)'>", page)
    assert links == ids and len(set(ids)) == len(ids)  # every heading listed, every link lands
    assert {"headline-table-per-run", "figures", "diagnostics", "methods", "provenance"} <= set(ids)
    md = Path(report["md"]).read_text()
    assert "## Contents" in md and "- [Headline table (per run)](#headline-table-per-run)" in md
    # units: onsets in steps, leads in checkpoints, in every header
    assert "onset_evil (step)" in md and "lead_checkpoints (checkpoints)" in md and "p_early_first (share 0-1)" in md
    assert re.search(r"<th>lead_checkpoints<span class='u'>checkpoints</span></th>", page)
    assert re.search(r"<th>onset_evil<span class='u'>step</span></th>", page)
    assert "in checkpoints, not steps (1 checkpoint = 2 training steps here" in md
    # every table in a horizontally scrolling wrapper; images never wider than the page
    assert page.count("<table") == page.count('<div class="scroll"><table') > 3
    assert ".scroll{overflow-x:auto" in page and "img{max-width:100%" in page and "name='viewport'" in page
    # captions say what to look at, not file names
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert caps and all("Look for" in c and not re.match(r"\s*[a-z_]+\s*(\(|$)", c) for c in caps)
    assert "A dashed vertical line with a dot marks an onset" in _section(page, "Trait scores over training: medical")


def test_trajectory_caption_says_when_no_onset_is_drawn(flat: dict) -> None:
    sec = _section(Path(flat["html"]).read_text(), "Trait scores over training: medical")
    assert "No onset was found in these runs, so no onset line is drawn" in sec and "dashed vertical" not in sec


def test_cell_formats() -> None:
    from emt.report.report import _fmt

    assert _fmt(0.001, "alpha") == "0.001" and _fmt(1e-5, "alpha") == "1e-05"  # never "0.0"
    assert _fmt(0.0123, "paired_t_p") == "0.0123" and _fmt(0.953, "p_early_first") == "0.95"
    assert _fmt(12.0, "onset_evil_lo") == "12" and _fmt(12.5, "onset_evil_lo") == "12.5"
    assert _fmt(float("nan"), "alpha") == "–" and _fmt(None) == "–"


def test_page_fits_narrow_screens_in_a_real_browser(report: dict, tmp_path: Path) -> None:
    """Headless Chromium at 1400 and 800 px: the page is never wider than the window (wide tables
    scroll inside their wrapper). Skipped where no chromium is installed."""
    import shutil

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chrome is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    probe = ("<script>addEventListener('load',()=>{const e=document.createElement('pre');e.id='probe';"
             "e.textContent='SW='+document.documentElement.scrollWidth+' CW='+document.documentElement.clientWidth;"
             "document.body.appendChild(e)})</script></body>")
    f = tmp_path / "probe.html"
    f.write_text(Path(report["html"]).read_text().replace("</body>", probe))
    for width in (1400, 800):
        r = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},1000",
                            "--virtual-time-budget=5000", "--dump-dom", f.as_uri()], capture_output=True, text=True,
                           timeout=180)
        m = re.search(r"SW=(\d+) CW=(\d+)", r.stdout)
        assert m, r.stderr[-2000:]
        assert int(m.group(1)) <= int(m.group(2)), (width, m.group(0))


def test_figures_with_nothing_to_show_are_left_out(tmp_path: Path) -> None:
    """No held-out loss or no coherence anywhere: no figure of empty panels."""
    import numpy as np

    from emt.report.figures import plot_all
    from emt.store import scores as store

    d = store.load(write_synthetic_run(tmp_path / "r" / "medical_mild-00000001", "medical_mild", {"evil": 5}, n=20))
    assert {"loss_vs_score", "coherence"} <= set(plot_all([d], tmp_path / "f1"))
    d["loss"]["heldout"] = np.full(20, np.nan)
    for tr in d["traits"].values():
        tr["coherence"] = np.full_like(tr["coherence"], np.nan)
    figs = plot_all([d], tmp_path / "f2")
    assert "loss_vs_score" not in figs and "coherence" not in figs and "trajectories" in figs
    assert not (tmp_path / "f2" / "coherence.png").exists()


def test_short_and_partial_runs_are_flagged_under_the_headline(tmp_path: Path) -> None:
    import h5py

    h5 = write_synthetic_run(tmp_path / "out" / "medical_mild-00000001", "medical_mild", {"evil": 4}, n=8)
    with h5py.File(h5, "r+") as f:
        f.attrs["partial"] = True
    out = build_report(tmp_path / "out", tmp_path / "rep", figures=False, n_boot=0)
    head = " ".join(out["warnings"]["headline"])
    assert "8 checkpoints: glr needs at least min_pre + min_post = 10" in head and "scores.h5 is partial" in head
    assert "scores.h5 is partial" in _section(Path(out["html"]).read_text(), "Headline table (per run)")


def test_stale_figures_of_an_earlier_report_are_removed(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "out" / "medical_mild-00000001", "medical_mild", {"hallucination": None, "evil": None},
                        n=20)
    rep = tmp_path / "rep"
    rep.mkdir()
    for name in ("lead_times.png", "lead_times.pdf", "early_zoom.png"):
        (rep / name).write_bytes(b"from an earlier report")
    out = build_report(tmp_path / "out", rep, n_boot=0)
    assert "lead_times" not in out["figures"] and not any((rep / n).exists() for n in ("lead_times.png", "lead_times.pdf",
                                                                                          "early_zoom.png"))
    assert (rep / "trajectories_medical.png").is_file()
