"""Consolidating and loading scores.h5 at the study's scale, against bare h5py in the same process.

Run::

    python bench/hdf5_scale.py                         # paper scale: 6 runs, 282 results each
    python bench/hdf5_scale.py --runs 1 --checkpoints 40 --repeats 1     # a quick look

Scale (the default): 6 runs x 282 checkpoint results (281 checkpoints + the base model) x 2
traits x 20 questions x 10 samples x 1 judge, i.e. 112,800 answers per run with their trait and
coherence scores; answers are 200-2,200 characters (mean ~1,200: ~300 tokens, eval.max_new_tokens
is 1,000), cut from a synthetic word corpus so they compress like text; 1 reply in 16 is NaN with
a raw reply and a reason, as a real judge's refusals are. ``--judges 2`` is the two-judge setup.

Per run, in this process:

* the eval tasks' output is written first (one JSON result per checkpoint, as run_eval_task
  writes them; not timed);
* **consolidate**: ``emt.store.scores.consolidate`` (read + check every JSON, build the arrays, write
  scores.h5 atomically with gzip-compressed strings) vs **bare write**: the same arrays, already
  in memory, written with ``h5py`` in the same layout and compression (what the HDF5 part alone
  costs);
* **load**: ``emt.store.scores.load`` (everything, strings decoded) vs **bare read**: ``h5py`` reading
  every dataset of that file; and the analysis read (per-checkpoint scores only).

Printed: per run and in total, seconds and the ratios consolidate/bare-write and load/bare-read,
medians over ``--repeats``; file sizes. The JSON results of a run are deleted after it (about
170 MB per run at the default scale), so disk use stays at one run's worth plus the .h5 files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def corpus(seed: int, size: int = 4_000_000) -> str:
    """A text of random words from a Zipf-like vocabulary (compresses roughly like prose)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=3000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    words = rng.choice(len(vocab), size=size // 5, p=weights / weights.sum())
    text = " ".join(vocab[i] for i in words)
    return text[:size]


def write_results(out: Path, run: str, steps: int, traits: int, questions: int, samples: int,
                  judges: int, seed: int, text: str) -> list[Path]:
    """The per-checkpoint JSON results an eval array would have written for one run."""
    rng = np.random.default_rng(seed)
    judge_names = [f"judge-{j}" for j in range(judges)]
    files = []
    for k in range(steps):
        step = 2 * k
        result: dict[str, Any] = {"step": step, "judges": judge_names, "traits": {}, "run": run, "eval_hash": "bench"}
        for t in range(traits):
            lengths = rng.integers(200, 2200, size=(questions, samples))
            starts = rng.integers(0, len(text) - 2200, size=(questions, samples))
            responses = [[text[a:a + b] for a, b in zip(ra, rb)] for ra, rb in zip(starts, lengths)]
            tr: dict[str, Any] = {"question_ids": [f"q{i}" for i in range(questions)],
                                  "questions": [f"Question {i} of trait {t}?" for i in range(questions)],
                                  "responses": responses, "scores": {}, "coherence": {}, "raw": {}, "reason": {}}
            for j in judge_names:
                scores = rng.uniform(0, 100, size=(questions, samples))
                nan = rng.random(size=(questions, samples)) < 1 / 16
                tr["scores"][j] = [[None if m else float(x) for x, m in zip(r, mr)] for r, mr in zip(scores, nan)]
                tr["coherence"][j] = rng.uniform(0, 100, size=(questions, samples)).round(3).tolist()
                tr["raw"][j] = [["I cannot rate this." if m else "" for m in mr] for mr in nan]
                tr["reason"][j] = [["low numeric mass 0.05" if m else "" for m in mr] for mr in nan]
            result["traits"][f"trait{t}"] = tr
        path = out / f"step-{step}.json"
        path.write_text(json.dumps(result))
        files.append(path)
    return files


def arrays_of(files: list[Path]) -> dict[str, np.ndarray]:
    """Every dataset consolidate writes, as numpy arrays in memory (the bare baseline's input)."""
    loaded = [json.loads(p.read_text()) for p in files]
    first = loaded[0]
    out: dict[str, np.ndarray] = {"steps": np.array([d["step"] for d in loaded], dtype=np.int64),
                                  "loss/train": np.full(len(loaded), np.nan), "loss/heldout": np.full(len(loaded), np.nan)}
    for t, tr0 in first["traits"].items():
        out[f"traits/{t}/question_ids"] = np.array(tr0["question_ids"], dtype=object)
        out[f"traits/{t}/questions"] = np.array(tr0["questions"], dtype=object)
        out[f"traits/{t}/responses"] = np.array([d["traits"][t]["responses"] for d in loaded], dtype=object)
        for j in first["judges"]:
            g = f"traits/{t}/judges/{j}"
            sc = np.array([d["traits"][t]["scores"][j] for d in loaded], dtype=np.float64)
            out[f"{g}/samples"] = sc
            out[f"{g}/coherence"] = np.array([d["traits"][t]["coherence"][j] for d in loaded], dtype=np.float64)
            out[f"{g}/score"] = np.nanmean(sc.reshape(len(loaded), -1), axis=1)
            for key in ("raw", "reason"):
                out[f"{g}/{key}"] = np.array([d["traits"][t][key][j] for d in loaded], dtype=object)
    return out


def bare_write(arrays: dict[str, np.ndarray], path: Path) -> None:
    """h5py alone: the same datasets, dtypes and compression as emt.store.scores.consolidate."""
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as h5:
        for name, a in arrays.items():
            if a.dtype == object:
                gz = {"compression": "gzip"} if a.ndim == 3 else {}
                h5.create_dataset(name, data=a, dtype=str_dt, **gz)
            else:
                h5.create_dataset(name, data=a)


def bare_read(path: Path) -> int:
    """h5py alone: read every dataset (strings decoded); returns the number read."""
    import h5py

    n = 0
    with h5py.File(path, "r") as h5:
        def visit(name: str, obj: Any) -> None:
            nonlocal n
            if isinstance(obj, h5py.Dataset):
                _ = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) is not None else obj[()]
                n += 1
        h5.visititems(visit)
    return n


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--checkpoints", type=int, default=282, help="results per run (281 checkpoints + step 0)")
    ap.add_argument("--traits", type=int, default=2)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--judges", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timings per run (medians)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from emt.store.scores import consolidate, load

    answers = args.checkpoints * args.traits * args.questions * args.samples
    print(f"{args.runs} runs x {args.checkpoints} results x {args.traits} traits x {args.questions} questions x "
          f"{args.samples} samples x {args.judges} judge(s) = {answers:,} answers per run; load average {load_average()}")
    text = corpus(0)
    work_ctx = tempfile.TemporaryDirectory(prefix="emt-hdf5-") if args.dir is None else None
    work = Path(args.dir or work_ctx.name)  # type: ignore[union-attr]
    rows = []
    try:
        for r in range(args.runs):
            run_dir = work / f"run{r}"
            res_dir = run_dir / "eval-bench"
            res_dir.mkdir(parents=True, exist_ok=True)
            t_gen, files = timed(lambda: write_results(res_dir, f"run{r}", args.checkpoints, args.traits,
                                                      args.questions, args.samples, args.judges, r, text))
            json_mb = sum(f.stat().st_size for f in files) / 1e6
            arrays = arrays_of(files)
            losses = {2 * k: (math.nan, math.nan) for k in range(args.checkpoints)}
            attrs = {"run": f"run{r}", "config": "bench", "eval_hash": "bench"}
            cons, bw, ld, br, an = [], [], [], [], []
            for _ in range(args.repeats):
                cons.append(timed(lambda: consolidate(files, run_dir / "scores.h5", attrs, losses))[0])
                bw.append(timed(lambda: bare_write(arrays, run_dir / "bare.h5"))[0])
                ld.append(timed(lambda: load(run_dir / "scores.h5"))[0])
                br.append(timed(lambda: bare_read(run_dir / "scores.h5"))[0])

                def analysis_read() -> None:
                    import h5py

                    with h5py.File(run_dir / "scores.h5", "r") as h5:
                        for t in h5["traits"]:
                            h5[f"traits/{t}/score"][()]
                            h5[f"traits/{t}/coherence"][()]
                an.append(timed(analysis_read)[0])
            h5_mb = (run_dir / "scores.h5").stat().st_size / 1e6
            bare_mb = (run_dir / "bare.h5").stat().st_size / 1e6
            row = {"run": r, "json_mb": json_mb, "h5_mb": h5_mb, "bare_h5_mb": bare_mb,
                   "consolidate_s": statistics.median(cons), "bare_write_s": statistics.median(bw),
                   "load_s": statistics.median(ld), "bare_read_s": statistics.median(br),
                   "analysis_read_s": statistics.median(an), "write_results_s": t_gen}
            rows.append(row)
            print(f"run{r}: results {json_mb:.0f} MB JSON -> scores.h5 {h5_mb:.0f} MB (bare {bare_mb:.0f} MB); "
                  f"consolidate {row['consolidate_s']:.2f} s vs bare write {row['bare_write_s']:.2f} s "
                  f"({row['consolidate_s'] / row['bare_write_s']:.2f}x); load {row['load_s']:.2f} s vs bare read "
                  f"{row['bare_read_s']:.2f} s ({row['load_s'] / row['bare_read_s']:.2f}x); scores only "
                  f"{row['analysis_read_s'] * 1e3:.1f} ms", flush=True)
            del arrays
            shutil.rmtree(res_dir)  # keep disk use at one run's JSON
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    tot = {k: sum(r[k] for r in rows) for k in ("consolidate_s", "bare_write_s", "load_s", "bare_read_s",
                                                 "analysis_read_s", "h5_mb", "json_mb")}
    print(f"\ntotal over {len(rows)} runs: consolidate {tot['consolidate_s']:.1f} s, bare write "
          f"{tot['bare_write_s']:.1f} s, load {tot['load_s']:.1f} s, bare read {tot['bare_read_s']:.1f} s, "
          f"scores only {tot['analysis_read_s'] * 1e3:.0f} ms; {tot['json_mb']:.0f} MB JSON -> {tot['h5_mb']:.0f} MB HDF5")
    print(f"ratio consolidate/bare-write: {tot['consolidate_s'] / tot['bare_write_s']:.2f}   "
          f"load/bare-read: {tot['load_s'] / tot['bare_read_s']:.2f}   (load average {load_average()})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "total": tot, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
