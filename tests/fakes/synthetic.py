"""Synthetic trajectories with known change points, and the onset-error table of every method.

Used by the tests and to document the methods' accuracy. A trajectory is flat at ``base`` until
checkpoint ``c`` and then rises by ``rise`` points linearly over ``ramp`` checkpoints
(``ramp=1`` is a step), then stays there; Gaussian noise of ``sigma`` points is added per
checkpoint. The known change point is ``c``: the first checkpoint whose noiseless value is above
``base``. Steps are spaced by 2 (0, 2, 4, ...) as in the study.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from emt.analysis.diagnostics import final_question_scores
from emt.analysis.onset import METHODS, onset
from emt.store import activations as act
from emt.store import scores as store


def trajectory(
    n: int = 281, c: int | None = 140, rise: float = 40.0, ramp: int = 1, base: float = 10.0,
) -> np.ndarray:
    """The noiseless trajectory [n]; ``c=None`` gives a flat (never-emerging) one."""
    i = np.arange(n, dtype=np.float64)
    if c is None:
        return np.full(n, base)
    return base + rise * np.clip((i - c + 1) / ramp, 0.0, 1.0)


def crossing_index(truth: np.ndarray, margin: float = 10.0) -> int | None:
    """First checkpoint whose noiseless value exceeds truth[0] + margin: what ``threshold`` targets."""
    hit = np.flatnonzero(truth > truth[0] + margin)
    return int(hit[0]) if hit.size else None


def noisy(
    rng: np.random.Generator, n: int = 281, c: int | None = 140, rise: float = 40.0, ramp: int = 1,
    sigma: float = 5.0, nan_frac: float = 0.0, nan_run: int = 0, base: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, scores, truth): ``truth`` plus N(0, sigma) noise, then NaN gaps.

    ``nan_frac``: that fraction of checkpoints (never step 0) set to NaN at random;
    ``nan_run``: that many checkpoints starting at ``c`` set to NaN (a gap right at the change).
    """
    truth = trajectory(n, c, rise, ramp, base)
    y = truth + rng.normal(0.0, sigma, n)
    if nan_frac > 0:
        drop = rng.choice(np.arange(1, n), size=int(round(nan_frac * (n - 1))), replace=False)
        y[drop] = np.nan
    if nan_run and c is not None:
        y[c:c + nan_run] = np.nan
    return np.arange(n, dtype=np.int64) * 2, y, truth


def samples(
    rng: np.random.Generator, n: int = 281, q: int = 20, s: int = 10, c: int | None = 140,
    rise: float = 40.0, ramp: int = 1, sigma: float = 5.0, base: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, samples [n, q, s], truth): per-answer scores whose per-checkpoint mean has noise ``sigma``.

    Each answer is truth + N(0, sigma * sqrt(q * s)) (not clipped to 0-100, so the mean's noise is
    exactly ``sigma``).
    """
    truth = trajectory(n, c, rise, ramp, base)
    x = truth[:, None, None] + rng.normal(0.0, sigma * np.sqrt(q * s), (n, q, s))
    return np.arange(n, dtype=np.int64) * 2, x, truth


def _observed(y: np.ndarray, i: int | None) -> int:
    """The first checkpoint at or after ``i`` whose score is finite (what any method can see)."""
    fin = np.flatnonzero(np.isfinite(y[i:]))
    return int(i + fin[0]) if fin.size else int(i)


SCENARIOS: dict[str, dict[str, Any]] = {
    # name: trajectory kwargs; c is drawn per seed in [0.3 n, 0.7 n]
    "step": {"ramp": 1},
    "ramp5": {"ramp": 5},
    "ramp20": {"ramp": 20},
    "step+nan10%": {"ramp": 1, "nan_frac": 0.10},
    "step+nanrun": {"ramp": 1, "nan_run": 3},
    "flat": {"c": None},
}


def error_table(
    methods: Sequence[str] | None = None, n_seeds: int | dict[str, int] = 100, sigma: float = 5.0,
    rise: float = 40.0, n: int = 281, scenarios: dict[str, dict[str, Any]] | None = None,
    params: dict[str, dict[str, Any]] | None = None, seed: int = 0, verbose: bool = True,
) -> Any:
    """Onset error in checkpoints of each method on each scenario over ``n_seeds`` random seeds.

    Returns a pandas DataFrame, one row per (method, scenario): ``mae`` (mean |error| vs the
    known change point c, misses excluded), ``within1`` (% of runs within +-1 checkpoint of c),
    ``within1_cross`` (% within +-1 of the noiseless margin crossing, the threshold's own target),
    ``miss`` (% None on a rising run). Targets are moved to the first checkpoint at or after
    them that has a score (a NaN gap at the change hides it from every method), ``fp`` (% non-None on the flat scenario). Every method sees
    the same series. ``params`` maps a method (or a label "method:anything") to its parameters.
    """
    methods = list(methods or METHODS)
    scenarios = scenarios or SCENARIOS
    params = params or {}
    rows = []
    for sc_name, sc in scenarios.items():
        for label in methods:
            m = label.split(":")[0]
            p = params.get(label, {})
            k = n_seeds[label] if isinstance(n_seeds, dict) else n_seeds
            errs, errs_x, miss, fp = [], [], 0, 0
            for i in range(k):
                rng = np.random.default_rng([seed, i])
                kw = dict(sc)
                c = kw.pop("c", int(rng.integers(int(0.3 * n), int(0.7 * n))))
                steps, y, truth = noisy(rng, n=n, c=c, rise=rise, sigma=sigma, **kw)
                o = onset(steps, y, method=m, **p)
                if c is None:
                    fp += o is not None
                    continue
                if o is None:
                    miss += 1
                    continue
                ci = int(np.searchsorted(steps, o))
                errs.append(ci - _observed(y, c))
                errs_x.append(ci - _observed(y, crossing_index(truth)))
            e, ex = np.abs(np.array(errs, dtype=float)), np.abs(np.array(errs_x, dtype=float))
            rising = sc.get("c", 0) is not None
            rows.append({
                "method": label, "scenario": sc_name, "seeds": k,
                "mae": float(e.mean()) if rising and e.size else np.nan,
                "within1": 100.0 * float((e <= 1).sum()) / k if rising else np.nan,
                "within1_cross": 100.0 * float((ex <= 1).sum()) / k if rising else np.nan,
                "miss": 100.0 * miss / k if rising else np.nan,
                "fp": 100.0 * fp / k if not rising else np.nan,
            })
    df = pd.DataFrame(rows)
    if verbose:
        with pd.option_context("display.width", 160, "display.max_rows", 200):
            print(f"\nonset error in checkpoints (sigma={sigma}, rise={rise}, n={n}, steps spaced by 2)")
            print(df.round(2).to_string(index=False))
    return df


# ---------------------------------------------------------------------------------------------
# synthetic runs: per-step result JSON through the store, as an evaluation writes them (tests, benchmarks)


def write_synthetic_run(
    run_dir: str | Path, name: str, onsets: Mapping[str, int | None], n: int = 41, q: int = 4, s: int = 3,
    rise: float = 40.0, sigma: float = 2.0, seed: int = 0, judges: Sequence[str] = ("judge/model-a",),
    nan_traits: Sequence[str] = (), activations: bool = False,
) -> Path:
    """A ``<run_dir>/scores.h5`` through :func:`emt.store.scores.consolidate`, from per-step result JSON
    files in the evaluation format; trait ``t`` steps up by ``rise`` at checkpoint ``onsets[t]``
    (None = never), steps 0, 2, 4, ... Traits in ``nan_traits`` get no score at all (a judge that
    never answered with a number). Returns the scores.h5 path."""
    run_dir = Path(run_dir)
    ev = run_dir / "eval-synthetic"
    ev.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for t, c in onsets.items():
        steps, x, _ = samples(rng, n=n, q=q, s=s, c=c, rise=rise, sigma=sigma)
        coh = np.clip(90.0 - 20.0 * np.arange(n)[:, None, None] / n + rng.normal(0, 3, (n, q, s)), 0, 100)
        data[t] = (np.clip(x, 0, 100), coh)

    def grid(a: np.ndarray) -> list[list[float | None]]:
        return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]

    files = []
    for i in range(n):
        res: dict[str, Any] = {"step": int(2 * i), "judges": list(judges), "traits": {}}
        for t, (x, coh) in data.items():
            nan = t in nan_traits
            res["traits"][t] = {
                "question_ids": [f"{t}-{k}" for k in range(q)], "questions": [f"question {k} about {t}?" for k in range(q)],
                "responses": [[f"answer {m}" for m in range(s)] for _ in range(q)],
                "scores": {j: grid(np.full((q, s), np.nan) if nan else x[i]) for j in judges},
                "coherence": {j: grid(coh[i]) for j in judges},
                "raw": {j: [["REFUSED" if nan else "" for _ in range(s)] for _ in range(q)] for j in judges},
                "reason": {j: [["no number" if nan else "" for _ in range(s)] for _ in range(q)] for j in judges},
            }
        f = ev / f"step-{2 * i}.json"
        f.write_text(json.dumps(res), encoding="utf-8")
        files.append(f)
    losses = {2 * i: (None if i == 0 else 2.5 - i / n, 2.6 - 0.5 * i / n) for i in range(n)}
    act_files, persona_vecs = None, None
    if activations:
        act_files, persona_vecs = synthetic_activations(ev, data, n, q, s, rng)
    attrs = {"run": name, "config_hash": "0123456789ab", "eval_hash": "synthetic", "git_commit": "deadbeefcafe",
             "git_dirty": False, "model": "synthetic", "config": "", "packages": {}}
    return store.consolidate(files, run_dir / "scores.h5", attrs, losses, act_files, persona_vecs)


def synthetic_activations(ev: Path, data: Mapping[str, Any], n: int, q: int, s: int, rng: np.random.Generator,
                           layers: Sequence[int] = (1, 2), hidden: int = 16, n_train: int = 6,
                           ) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    """Planted activations for a synthetic run: each answer's response mean moves along its trait's
    persona direction in proportion to its score; training and evaluation prompts shift within one
    shared 5-D subspace as training proceeds; the base model's last-prompt-token vectors of each
    question are linear in the question's final score."""
    L = len(layers)
    traits = list(data)
    dirs = {t: rng.normal(size=(L, hidden)) for t in traits}
    for v in dirs.values():
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    shared = np.linalg.qr(rng.normal(size=(hidden, 5)))[0].T  # [5, H]: k=5 shared shift directions
    w = rng.normal(size=hidden)
    base_eval = rng.normal(size=(len(traits) * q, L, hidden))
    base_train = rng.normal(size=(n_train, L, hidden))
    final = {t: final_question_scores(data[t][0]) for t in traits}
    offsets = {t: [i * q, q] for i, t in enumerate(traits)}
    files = []
    for i in range(n):
        frac = i / max(n - 1, 1)
        shift_e = (rng.normal(size=(len(traits) * q, 5)) @ shared)[:, None, :] * frac * 3
        shift_t = (rng.normal(size=(n_train, 5)) @ shared)[:, None, :] * frac * 3
        pm = base_eval + shift_e
        pl = pm.copy()
        if i == 0:  # the predictor's input: linear in each question's final score
            for k, t in enumerate(traits):
                y = np.nan_to_num(final[t])
                pl[k * q:(k + 1) * q] = base_eval[k * q:(k + 1) * q] * 0.005 + (y[:, None, None] / 50.0) * w
        resp = []
        for t in traits:
            x = np.nan_to_num(data[t][0][i])  # [q, s] scores
            r = rng.normal(size=(q, s, L, hidden)) * 0.3 + (x[..., None, None] / 25.0) * dirs[t]
            resp.append(r.reshape(q * s, L, hidden))
        arrays = {"eval/prompt_mean": pm, "eval/prompt_last": pl, "eval/response_mean": np.concatenate(resp),
                  "train/prompt_mean": base_train + shift_t, "train/prompt_last": base_train + shift_t}
        meta = {"layers": list(layers), "traits": offsets, "samples": s, "eval_digest": "synthetic",
                "train_digest": "synthetic", "train_prompts": [f"training prompt {k}" for k in range(n_train)]}
        f = ev / f"step-{2 * i}.act.npz"
        act.save_step(f, arrays, meta=meta)
        files.append(f)
    vecs = {t: {"vector": dirs[t] * 4.0, "layers": list(layers), "kept": 12, "pairs": 16, "pos_trait": 80.0,
                "neg_trait": 5.0} for t in traits}
    return files, vecs
