"""emt.analysis on synthetic trajectories with known change points.

Noise level of the accuracy tests: Gaussian sigma = 5 points (0-100 scale) per checkpoint on a
40-point rise, n = 281 checkpoints, steps 0, 2, 4, ..., change point c drawn in [0.3 n, 0.7 n].
Bounds (from the error table, `tests.fakes.synthetic.error_table`; each has slack over what was
measured with 100-200 seeds):
  glr (default, 100 seeds): within +-1 checkpoint on >= 90% of step, 5-checkpoint ramp, NaN runs
    (measured 100 / 91 / 99 / 97), none missed, flat runs called <= 3% (measured 0%; alpha 0.5%).
    The harder grid of issue 16 (sigma 1-8, jumps 2-10 sigma, spikes, clipping) is bench/onset_grid.py.
  foot (200 seeds): within +-1 checkpoint of the change on >= 95% of step, 5-checkpoint
    ramp, 10%-NaN and NaN-at-change runs (the issue's bar; measured 99.5 / 96 / 99 / 96.5);
    None on >= 95% of flat runs (measured 100%).
  threshold: the same on steps, and within +-1 of its own target (the margin crossing) on ramps.
  pelt, binseg: within +-1 on >= 90% of steps; false positives <= 5%.
  piecewise: within +-1 on >= 90% of steps and ramps (vs the foot of the ramp); fp <= 5%.
  cusum: within +-1 on >= 70% of steps (its excursion start is biased early); fp <= 10%.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from emt import analysis as A
from tests.fakes import synthetic as syn

SIGMA = 5.0
N_SEEDS = 100


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """The error table of every method (printed with ``pytest -s``)."""
    t0 = time.time()
    seeds = {m: N_SEEDS for m in A.METHODS} | {"foot": 200}
    df = syn.error_table(n_seeds=seeds, sigma=SIGMA, verbose=True)
    print(f"error table: {time.time() - t0:.1f} s")
    return df


def _row(df: pd.DataFrame, method: str, scenario: str) -> pd.Series:
    return df[(df.method == method) & (df.scenario == scenario)].iloc[0]


def test_default_method_accuracy(table: pd.DataFrame) -> None:
    """glr, the default: the planted step found within +-1 checkpoint nearly always, the ramp's foot
    too, and a never-emerging series rarely called (its stated rate is alpha = 0.5%)."""
    assert A.DEFAULT_METHOD == "glr"
    for sc in ("step", "ramp5", "step+nan10%", "step+nanrun"):
        assert _row(table, "glr", sc).within1 >= 90, sc
        assert _row(table, "glr", sc).miss == 0, sc
    assert _row(table, "glr", "flat").fp <= 3
    assert _row(table, "glr", "ramp20").mae <= 3.0


def test_foot_accuracy(table: pd.DataFrame) -> None:
    for sc in ("step", "ramp5", "step+nan10%", "step+nanrun"):
        assert _row(table, "foot", sc).within1 >= 95, sc
        assert _row(table, "foot", sc).miss == 0, sc
    assert _row(table, "foot", "flat").fp <= 5
    # slow ramps: still near the foot, where threshold lags by margin / slope checkpoints
    assert _row(table, "foot", "ramp20").mae <= 2.0 < _row(table, "threshold", "ramp20").mae


def test_threshold_accuracy(table: pd.DataFrame) -> None:
    for sc in ("step", "step+nan10%", "step+nanrun"):
        assert _row(table, "threshold", sc).within1 >= 95, sc
    # on a ramp the threshold onset is where the rise clears the margin (its definition)
    assert _row(table, "threshold", "ramp5").within1_cross >= 95
    assert _row(table, "threshold", "flat").fp <= 5


@pytest.mark.parametrize("method,step_min,fp_max", [
    ("pelt", 90, 5), ("binseg", 90, 5), ("piecewise", 90, 5), ("cusum", 70, 10),
])
def test_other_methods_accuracy(table: pd.DataFrame, method: str, step_min: float, fp_max: float) -> None:
    assert _row(table, method, "step").within1 >= step_min
    assert _row(table, method, "step+nan10%").within1 >= step_min - 5
    assert _row(table, method, "flat").fp <= fp_max
    assert _row(table, method, "step").miss <= 5


def test_piecewise_finds_foot_of_ramp(table: pd.DataFrame) -> None:
    assert _row(table, "piecewise", "ramp5").within1 >= 90
    assert _row(table, "piecewise", "ramp20").mae <= 2.0


def test_noiseless_exact() -> None:
    steps = np.arange(100) * 2
    y = syn.trajectory(100, c=50)
    for m in A.METHODS:
        assert A.onset(steps, y, method=m) == 100, m
    flat = syn.trajectory(100, c=None)
    for m in A.METHODS:
        assert A.onset(steps, flat, method=m) is None, m


def test_nan_never_zero() -> None:
    """Leading NaNs followed by a flat 30: a NaN read as 0 would put the baseline at 0 and fire."""
    steps = np.arange(60) * 2
    y = np.r_[np.full(20, np.nan), np.full(40, 30.0)]
    for m in A.METHODS:
        assert A.onset(steps, y, method=m) is None, m
    # NaNs inside a run of high points do not break the run of k=5 finite points
    y2 = np.r_[np.full(30, 10.0), [50, np.nan, 50, np.nan, 50, 50, 50], np.full(23, 50.0)]
    assert A.onset(steps, y2) == 60
    assert A.peak(steps[:3], np.r_[np.nan, 5.0, np.nan]) == (5.0, 2)
    assert A.auc(steps[:3], np.array([np.nan, np.nan, 1.0])) is None


def test_threshold_params_and_errors() -> None:
    steps = np.arange(40) * 2
    y = np.r_[np.full(20, 0.0), np.full(20, 8.0)]
    assert A.onset(steps, y, method="threshold") is None  # below the default margin of 10
    assert A.onset(steps, y, method="threshold", margin=5) == 40
    assert A.onset(steps, y, method="threshold", baseline=-5) == 40
    # glr finds the same noiseless 8-point rise (evidence, not a margin) unless given a floor above it
    assert A.onset(steps, y) == 40
    assert A.onset(steps, y, min_effect=10) is None
    with pytest.raises(ValueError, match="unknown parameter"):
        A.onset(steps, y, margin=5)
    with pytest.raises(ValueError, match="unknown onset method"):
        A.onset(steps, y, method="nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        A.onset(steps, y, method="threshold", window=3)
    with pytest.raises(ValueError, match="differ in length"):
        A.onset(steps, y[:-1])


@pytest.mark.parametrize("method", ["threshold", "foot"])
def test_vectorised_matches_scalar(method: str) -> None:
    rng = np.random.default_rng(3)
    rows = np.stack([syn.noisy(rng, n=120, c=60, ramp=1 + i % 6, nan_frac=0.1)[1] for i in range(50)]
                    + [syn.noisy(rng, n=120, c=None)[1] for _ in range(10)])
    steps = np.arange(120) * 2
    vec = A.threshold_onset_index if method == "threshold" else A.foot_onset_index
    idx = vec(rows)
    assert (idx >= 0).sum() >= 50
    for r, i in zip(rows, idx):
        o = A.onset(steps, r, method=method)
        assert (o is None and i < 0) or o == steps[i]
    # the bootstrap's batched path gives what the scalar path gives on the full data
    _, x, _ = syn.samples(np.random.default_rng(4), n=120, c=60, ramp=5)
    r = A.bootstrap(steps, x, "onset", n_boot=20, method=method)
    assert r.estimate == A.onset(steps, A.mean_series(x), method=method)


def test_foot_locates_ramp_start() -> None:
    steps = np.arange(100) * 4  # irregular spacing in steps is handled in checkpoint units
    for ramp in (1, 3, 5, 10, 20):
        y = syn.trajectory(100, c=50, ramp=ramp)
        assert A.onset(steps, y, method="foot") == 200, ramp  # checkpoint 50
        assert A.onset(steps, y, method="threshold") == 4 * (50 + ramp // 4), ramp  # the margin crossing
    # a change hidden by a NaN gap is reported at the first scored checkpoint after it
    y = syn.trajectory(100, c=50)
    y[50:53] = np.nan
    assert A.onset(steps, y) == 4 * 53
    with pytest.raises(ValueError, match="window"):
        A.onset(steps, y, method="foot", window=0)


def test_lead_time_sign_and_units() -> None:
    steps = np.arange(200) * 2
    early, late = syn.trajectory(200, c=80), syn.trajectory(200, c=100)
    lt = A.lead_time(steps, early, late)
    assert lt["onset_early"] == 160 and lt["onset_late"] == 200
    assert lt["steps"] == 40 and lt["checkpoints"] == 20.0 and lt["spacing"] == 2.0
    assert A.lead_time(steps, late, early)["checkpoints"] == -20.0
    none = A.lead_time(steps, early, syn.trajectory(200, c=None))
    assert none["steps"] is None and none["checkpoints"] is None
    allm = A.lead_times_all_methods(steps, early, late)
    assert set(allm["methods"]) == set(A.METHODS)
    assert allm["agreement"]["n_agree"] == len(A.METHODS) and allm["agreement"]["spread"] == 0


def test_peak_auc_coherence() -> None:
    steps = np.arange(5) * 2
    y = np.array([0.0, 10, 30, 20, np.nan])
    assert A.peak(steps, y) == (30.0, 4)
    # trapezoid over finite points (0..6), per step: (0+10)/2*2 + (10+30)/2*2 + (30+20)/2*2 = 100 -> /6
    assert A.auc(steps, y) == pytest.approx(100 / 6)
    assert A.coherence_drop(np.array([80.0, 70, 40, 60])) == pytest.approx(25.0)
    assert A.coherence_drop(np.array([80.0, 70, 40, 60]), to="min") == pytest.approx(50.0)
    coh = np.full((3, 2, 2), 50.0)
    coh[2] = 25.0
    coh[1, 0, 0] = np.nan
    assert A.coherence_drop(coh) == pytest.approx(50.0)
    t = np.arange(100) * 2
    # ramp of 4/ckpt from checkpoint 50: the foot onset is checkpoint 50 (threshold: 52, the first
    # point > +10), the peak the first point of the plateau (checkpoint 59): 9 checkpoints = 18 steps
    assert A.time_to_peak(t, syn.trajectory(100, c=50, ramp=10)) == 18
    assert A.time_to_peak(t, syn.trajectory(100, c=50, ramp=10), method="threshold") == 14
    assert A.time_to_peak(t, syn.trajectory(100, c=50, ramp=10), from_onset=False) == 118


def test_bootstrap_covers_and_reproducible() -> None:
    """95% percentile CI of the (default, glr) onset contains the true onset in most runs (per-sample
    data, 281 x 20 x 10, mean noise sigma=5), and the same seed gives the same interval."""
    hits, n_runs = 0, 30
    t0 = time.time()
    for i in range(n_runs):
        rng = np.random.default_rng(100 + i)
        c = int(rng.integers(80, 200))
        steps, x, _ = syn.samples(rng, c=c, sigma=SIGMA)
        est, lo, hi = A.bootstrap(steps, x, "onset", n_boot=1000, seed=0)
        hits += lo is not None and lo - 2 <= 2 * c <= hi + 2  # +-1 checkpoint (2 steps) of slack
    per = (time.time() - t0) / n_runs
    print(f"bootstrap 1000 x (281 x 20 x 10) glr onset: {per:.3f} s per call; coverage {hits}/{n_runs}")
    assert per < 1.0
    assert hits >= 0.8 * n_runs
    steps, x, _ = syn.samples(np.random.default_rng(7), c=140)
    assert tuple(A.bootstrap(steps, x, n_boot=200, seed=5)) == tuple(A.bootstrap(steps, x, n_boot=200, seed=5))
    r = A.bootstrap(steps, x, "onset", n_boot=50, seed=1, method="piecewise")
    assert r.lo <= r.estimate <= r.hi and r.frac_none == 0.0
    r2 = A.bootstrap(steps, x, "peak_step", n_boot=50)
    assert r2.estimate is not None


def test_bootstrap_lead_time_and_nan_samples() -> None:
    rng = np.random.default_rng(11)
    steps, e, _ = syn.samples(rng, c=100)
    _, l_, _ = syn.samples(rng, c=120)
    e[:, 0, :3] = np.nan  # missing scores are dropped from the means, not read as 0
    res = A.bootstrap_lead_time(steps, e, l_, n_boot=300, seed=0)
    assert res.estimate == pytest.approx(20.0, abs=1)
    assert res.lo <= 20 <= res.hi
    assert tuple(res) == tuple(A.bootstrap_lead_time(steps, e, l_, n_boot=300, seed=0))
    with pytest.raises(ValueError, match="paired"):
        A.bootstrap_lead_time(steps, e[:, :5], l_, n_boot=10, paired=True)


def test_seeds_ci() -> None:
    m, lo, hi = A.seeds_ci([10, 12, 11, 13])
    assert m == 11.5 and lo == pytest.approx(11.5 - 3.182446 * np.std([10, 12, 11, 13], ddof=1) / 2, rel=1e-4)
    assert A.seeds_ci([5.0]) == (5.0, None, None)
    assert A.seeds_ci([None, 3.0, None, 5.0])[0] == 4.0
    assert A.seeds_ci([]) == (None, None, None)
    m, lo, hi = A.seeds_ci(list(range(100)), method="percentile")
    assert lo == pytest.approx(2.475) and hi == pytest.approx(96.525)


def _fake_load(run: str = "medical_mild", c_hall: int = 100, c_evil: int = 120, n: int = 200) -> dict:
    """A dict shaped like emt.store.scores.load output."""
    rng = np.random.default_rng(0)
    steps = np.arange(n, dtype=np.int64) * 2
    traits = {}
    for t, c in (("hallucination", c_hall), ("evil", c_evil)):
        _, samples, _ = syn.samples(rng, n=n, q=4, s=3, c=c, sigma=2.0)
        coh = np.full((n, 4, 3), 90.0)
        coh[n // 2:] = 72.0
        traits[t] = {"score": A.mean_series(samples), "samples": samples, "coherence": coh,
                     "responses": np.full((n, 4, 3), "x", dtype=object), "question_ids": np.array(["a", "b", "c", "d"]),
                     "questions": np.array(["?"] * 4), "judges": {}}
    loss = {"train": np.r_[np.nan, np.linspace(2, 1, n - 1)], "heldout": np.linspace(2.5, 1.5, n)}
    return {"steps": steps, "loss": loss, "traits": traits, "attrs": {"run": run}}


def test_run_summary_and_tables() -> None:
    d = _fake_load()
    s = A.run_summary(d)
    assert (s["run"], s["domain"], s["level"], s["seed"]) == ("medical_mild", "medical", "mild", None)
    assert s["traits"]["hallucination"]["onset_step"] == 200
    assert s["traits"]["evil"]["onset_step"] == 240
    assert s["traits"]["evil"]["coherence_drop"] == pytest.approx(20.0)
    assert s["lead_time"]["checkpoints"] == 20.0
    s2 = A.run_summary(_fake_load("math_strong_s3", 80, 130), method="piecewise")
    assert s2["seed"] == 3 and s2["lead_time"]["checkpoints"] == 50.0
    only = _fake_load()
    del only["traits"]["evil"]
    assert A.run_summary(only)["lead_time"] is None
    tab = A.headline_table([s, s2])
    assert list(tab.columns) == [
        "run", "domain", "level", "onset_evil", "onset_evil_lo", "onset_evil_hi", "effect_evil",
        "onset_hallucination", "onset_hallucination_lo", "onset_hallucination_hi", "effect_hallucination",
        "peak_evil", "peak_hallucination", "lead_checkpoints", "lead_lo", "lead_hi", "p_early_first",
        "coherence_drop_evil", "coherence_drop_hallucination", "coherence_drop"]
    assert tab.shape[0] == 2 and tab.lead_checkpoints.tolist() == [20.0, 50.0]
    tidy = A.tidy_table(d)
    assert list(tidy.columns) == ["step", "trait", "score", "coherence", "train_loss", "heldout_loss"]
    assert len(tidy) == 2 * 200 and tidy.step.is_monotonic_increasing
    assert tidy.coherence.iloc[-1] == pytest.approx(72.0)


# ---------------------------------------------------------------------------------------------
# glr (the default): noise from the data, a stated false-positive rate, spikes, effect sizes

def test_glr_false_positive_rate_matches_alpha() -> None:
    """On white-noise series (the null the threshold is simulated for, here with new seeds) the share
    called emerged is near alpha: 2000 series of 150 points at alpha = 5% give 100 +- 30."""
    from emt.analysis.onset import glr_detect_index

    y = np.random.default_rng(99).normal(20.0, 3.0, (2000, 150))
    fired = int((glr_detect_index(y, alpha=0.05)["index"] >= 0).sum())
    assert 70 <= fired <= 130, fired
    assert int((glr_detect_index(y)["index"] >= 0).sum()) <= 25  # the default alpha = 0.5%


def test_glr_spikes_nan_and_small_rises() -> None:
    rng = np.random.default_rng(8)
    steps = np.arange(200) * 2
    found, false = 0, 0
    for i in range(30):
        y = 20.0 + rng.normal(0.0, 2.0, 200)
        sp = rng.choice(np.arange(5, 195), size=2, replace=False)
        y[sp] += 14.0  # two isolated 7-sigma spikes
        y[rng.choice(np.arange(1, 200), size=6, replace=False)] = np.nan
        false += A.onset(steps, y) is not None  # spikes are not a rise (alpha = 0.5% per series remains)
        y[120:] += 10.0  # a persistent 5-sigma rise: 10 points, under foot's margin of 10 with noise
        o = A.onset(steps, y)
        found += o is not None and abs(o - 240) <= 4
        assert A.onset(steps, y, min_effect=15.0) is None  # the optional floor in points
    assert found >= 28 and false <= 2, (found, false)


def test_glr_noise_from_samples_and_effect() -> None:
    """The per-checkpoint standard error from the answers is the noise glr uses; detect() reports
    the rise in points, the statistic and its threshold."""
    from emt.analysis.uncertainty import checkpoint_se

    rng = np.random.default_rng(4)
    steps, x, _ = syn.samples(rng, n=150, q=20, s=10, c=90, rise=12.0, sigma=2.0)
    se = checkpoint_se(x)
    assert np.allclose(np.median(se), 2.0, rtol=0.15)  # the mean's sampling noise, sigma = 2 by construction
    y = A.mean_series(x)
    r = A.detect(steps, y, se=se)
    assert r.step == 180 and r.effect == pytest.approx(12.0, abs=1.5)
    assert r.z > r.threshold > 0 and r.sigma == pytest.approx(2.0, rel=0.25)
    r2 = A.detect(steps, y, method="threshold")  # every method reports its onset's effect in points
    assert r2.step == 180 and r2.effect == pytest.approx(12.0, abs=1.5) and r2.z is None
    assert A.detect(steps, y, method="threshold", margin=20).effect is None  # no onset, no effect
    x[:, :, :5] = np.nan
    assert np.isfinite(checkpoint_se(x)).all()
    with pytest.raises(ValueError, match="se has shape"):
        A.onset(steps, y, se=se[:-1])


def test_bootstrap_onsets_p_first_and_seeds() -> None:
    from emt.analysis.uncertainty import bootstrap_onsets, paired_seed_comparison, pooled_seeds

    comps = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        steps, e, _ = syn.samples(rng, n=150, q=10, s=5, c=60, rise=15.0, sigma=3.0)
        _, l_, _ = syn.samples(rng, n=150, q=10, s=5, c=80, rise=15.0, sigma=3.0)
        c = bootstrap_onsets(steps, e, l_, n_boot=300, seed=seed)
        assert c.onset_early.lo <= 120 <= c.onset_early.hi and c.onset_late.lo <= 160 <= c.onset_late.hi
        assert c.lead.lo <= 20 <= c.lead.hi and c.p_early_first >= 0.99
        comps.append(c)
    # the same answers for both traits, resampled independently: by symmetry P(early first) is a half
    steps, e, _ = syn.samples(np.random.default_rng(9), n=150, q=10, s=5, c=70, rise=6.0, sigma=3.0)
    tie = bootstrap_onsets(steps, e, e.copy(), n_boot=400)
    assert tie.p_early_first is not None and 0.35 <= tie.p_early_first <= 0.65, tie.p_early_first
    pooled = pooled_seeds(comps, 2.0)
    assert pooled["n_seeds"] == 3 and pooled["lo"] <= 20 <= pooled["hi"] and pooled["p_early_first"] >= 0.99
    pc = paired_seed_comparison([c.onset_early.estimate for c in comps], [c.onset_late.estimate for c in comps], 2.0)
    assert pc["n"] == 3 and pc["lo"] <= 20 <= pc["hi"] and pc["t_p"] is not None
    assert paired_seed_comparison([1.0, 2.0], [3.0, 4.0])["t_p"] is None  # fewer than 3 seeds: no test


def test_numbers_only_load(tmp_path) -> None:
    """store.load(strings=False) leaves out the answer and reply strings and gives the same numbers."""
    from emt.store import scores as store

    f = syn.write_synthetic_run(tmp_path / "r", "medical_mild", {"evil": 10, "hallucination": 5}, n=21)
    full, lean = store.load(f), store.load(f, strings=False)
    for t in full["traits"]:
        assert "responses" in full["traits"][t] and "responses" not in lean["traits"][t]
        j = next(iter(lean["traits"][t]["judges"]))
        assert "raw" not in lean["traits"][t]["judges"][j] and "reason" not in lean["traits"][t]["judges"][j]
        np.testing.assert_array_equal(full["traits"][t]["samples"], lean["traits"][t]["samples"])
        assert list(lean["traits"][t]["question_ids"]) == list(full["traits"][t]["question_ids"])
    assert A.run_summary(lean)["lead_time"] == A.run_summary(full)["lead_time"]
