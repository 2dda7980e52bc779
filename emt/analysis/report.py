"""The study report: every run's scores.h5 -> headline table, figures, report.md/.html, tidy.csv.

Typical use::

    from emt.analysis.report import build_report
    paths = build_report(Path("outputs"), Path("outputs/report"))
    print(paths["html"])

``report.html`` is self-contained (figures embedded as base64 PNG) so it can be mailed or
attached to a ticket; ``report.md`` links the PNGs next to it. Every file is written through
:mod:`emt.atomic`, so a reader never sees a half-written report.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emt import atomic
from emt.analysis.figures import plot_all, run_name
from emt.analysis.metrics import lead_times_all_methods
from emt.analysis.onset import (
    DEFAULT_METHOD, METHODS, onset_cusum, onset_foot, onset_piecewise, onset_ruptures, onset_threshold,
)
from emt.analysis.summary import EARLY, LATE, headline_table, run_summary, tidy_table

SCORES_NAME = "scores.h5"
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{6,}$")  # run dirs are <name>-<config hash>


class NoScoresError(FileNotFoundError):
    """No scores.h5 under the given directory."""


def find_scores(root: str | Path) -> list[Path]:
    """Every ``scores.h5`` at or under ``root`` (an output root, its ``runs/`` or one run dir), sorted.

    Raises :class:`NoScoresError` naming ``root`` when there is none.
    """
    root = Path(root)
    if root.is_file() and root.name == SCORES_NAME:
        return [root]
    found = sorted(root.rglob(SCORES_NAME)) if root.is_dir() else []
    if not found:
        why = "does not exist" if not root.exists() else "contains no scores.h5"
        raise NoScoresError(f"{root} {why}: no scored runs to report on. Run launch/eval_array.py first "
                            f"(it evaluates every checkpoint and consolidates <run dir>/scores.h5).")
    return found


def load_runs(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Load each scores.h5; a file without a ``run`` attribute is named after its directory
    (``<name>-<hash>`` -> ``<name>``) so every run has a name for tables and figures."""
    from emt import store

    runs = []
    for f in files:
        d = store.load(f)
        if not run_name(d):
            d["attrs"]["run"] = _HASH_SUFFIX.sub("", Path(f).parent.name)
        d["path"] = str(f)
        runs.append(d)
    return runs


def tidy_frame(runs: Sequence[Mapping[str, Any]]) -> Any:
    """One row per (run, step, trait): ``run, domain, level, seed, step, trait, score, coherence,
    train_loss, heldout_loss`` (pandas DataFrame)."""
    import pandas as pd

    from emt.analysis.summary import parse_run_name

    frames = []
    for d in runs:
        df = tidy_table(d)
        p = parse_run_name(run_name(d))
        df.insert(0, "seed", p["seed"])
        df.insert(0, "level", p["level"])
        df.insert(0, "domain", p["domain"])
        df.insert(0, "run", run_name(d))
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["seed"] = out["seed"].astype("Int64")
    return out


def method_parameters(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The onset method's effective parameters: its defaults overridden by ``params``."""
    fn = {"foot": onset_foot, "threshold": onset_threshold, "cusum": onset_cusum, "pelt": onset_ruptures,
          "binseg": onset_ruptures, "piecewise": onset_piecewise}.get(method)
    if fn is None:
        raise ValueError(f"unknown onset method {method!r}; choose one of {METHODS}")
    out = {k: p.default for k, p in inspect.signature(fn).parameters.items()
           if p.kind is p.KEYWORD_ONLY and k != "method"}
    out.update(params or {})
    return out


def domain_table(table: Any) -> Any:
    """The headline table averaged per (domain, level): run count, mean onset steps, lead time
    and coherence drop (seeds of one setting pooled)."""
    num = [c for c in table.columns if c.startswith(("onset_", "lead_", "coherence_drop"))]
    t = table.copy()
    for c in num:
        t[c] = t[c].astype("float64")
    g = t.groupby(["domain", "level"], dropna=False, sort=True)
    out = g[num].mean()
    out.insert(0, "runs", g.size())
    return out.reset_index()


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        import pandas as pd

        if v is pd.NA:
            return "–"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.1f}"
    return str(v)


def markdown_table(df: Any) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); missing values as an en dash."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(df: Any) -> str:
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False)]
    return f'<table><thead><tr>{cells}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def provenance_table(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Per run: judge models, model, config hash, git commit (+dirty), emt version, created."""
    import pandas as pd

    rows = []
    for d in runs:
        a = d.get("attrs", {})
        judges = a.get("judge_models", "")
        try:
            judges = ", ".join(json.loads(judges)) if judges else ""
        except (TypeError, ValueError):
            judges = str(judges)
        dirty = a.get("git_dirty")
        commit = str(a.get("git_commit", "") or "")[:12]
        if commit and dirty is not None:
            commit += " (dirty)" if str(dirty).lower() in ("true", "1") else " (clean)"
        rows.append({"run": run_name(d), "judges": judges, "model": a.get("model", ""),
                     "config_hash": a.get("config_hash", ""), "git_commit": commit or "–",
                     "emt_version": a.get("emt_version", ""), "created": a.get("created", "")})
    return pd.DataFrame(rows)


def _no_score_traits(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for d in runs:
        for t, tr in d["traits"].items():
            if not np.any(np.isfinite(np.asarray(tr["score"], dtype=np.float64))):
                out.append(f"{run_name(d)}/{t}")
    return out


def _methods_text(method: str, params: Mapping[str, Any], judges: Sequence[str], n_runs: int) -> str:
    p = ", ".join(f"{k}={v}" for k, v in params.items())
    return (f"Onset method: <b>{html.escape(method)}</b> ({html.escape(p)}); see emt.analysis.onset. "
            f"Scores are the NaN-aware mean trait score (0-100) over questions and samples of the default "
            f"judge; the lead time is onset({LATE}) - onset({EARLY}) in checkpoints (positive = {EARLY} "
            f"emerges first). Coherence drop is the percent drop of mean coherence from step 0 to the last "
            f"checkpoint, per prompt set. Bands in the trajectory figures are 95% normal intervals over "
            f"question means. Judge model(s): {html.escape(', '.join(judges) or 'unknown')}. "
            f"{n_runs} run(s).")


def build_report(
    root: str | Path, out_dir: str | Path, method: str = DEFAULT_METHOD,
    params: Mapping[str, Any] | None = None, figures: bool = True,
) -> dict[str, Any]:
    """Report on every scores.h5 under ``root`` (an output root, its ``runs/`` dir or one run).

    Args:
        root: where to look for ``scores.h5`` files (recursively).
        out_dir: where the report goes (created).
        method, params: onset method and its parameters for the table and the onset markers; the
            lead-time figure shows every method with its defaults.
        figures: False skips the figures (table, markdown, HTML and CSV only).

    Returns:
        ``{"md", "html", "csv", "table_csv", "figures": {name: [png, pdf]}, "table": DataFrame,
        "summaries": {run: run_summary}, "runs": [run names]}``.

    Raises:
        NoScoresError: no scores.h5 under ``root`` (says to run launch/eval_array.py first).
    """
    params = dict(params or {})
    eff = method_parameters(method, params)  # validates the method before any work
    files = find_scores(root)  # before creating out_dir: a typo in root must not leave empty dirs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(files)
    summaries = {run_name(d): run_summary(d, method=method, run=run_name(d), **params) for d in runs}
    table = headline_table(list(summaries.values()))
    by_domain = domain_table(table)
    lead = {run_name(d): lead_times_all_methods(d["steps"], d["traits"][EARLY]["score"], d["traits"][LATE]["score"])
            for d in runs if EARLY in d["traits"] and LATE in d["traits"]}
    figs = plot_all(runs, out_dir, summaries, method, lead=lead) if figures else {}
    pngs = [p for ps in figs.values() for p in ps if p.suffix == ".png"]

    csv = out_dir / "tidy.csv"
    with atomic.atomic_path(csv, suffix=".csv") as tmp:
        tidy_frame(runs).to_csv(tmp, index=False)
    table_csv = out_dir / "headline.csv"
    with atomic.atomic_path(table_csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)

    judges = sorted({j for d in runs for j in json.loads(d["attrs"].get("judge_models", "[]") or "[]")})
    prov = provenance_table(runs)
    missing = _no_score_traits(runs)
    methods_html = _methods_text(method, eff, judges, len(runs))
    missing_note = ("Traits with no scores (every judge reply unparseable or missing): " + ", ".join(missing)
                    if missing else "")

    # markdown: the table plus the PNGs linked relative to the report
    md = [f"# Emergent misalignment report ({len(runs)} runs)", "",
          "## Headline table (per run)", "", markdown_table(table), "",
          "## Per domain and level (mean over runs)", "", markdown_table(by_domain), "",
          "## Methods", "", re.sub(r"</?b>", "**", html.unescape(methods_html)), ""]
    if missing_note:
        md += [f"**{missing_note}** (figures show \"no scores\" there)", ""]
    md += ["## Provenance", "", markdown_table(prov), "", "## Figures", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    md_path = atomic.write_text(out_dir / "report.md", "\n".join(md))

    imgs = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{html.escape(p.stem)}'
        f" (PDF alongside: {html.escape(p.with_suffix('.pdf').name)})</figcaption></figure>" for p in pngs)
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figure{margin:1.5em 0}.note{background:#fff3cd;padding:0.5em;border:1px solid #e0c96a}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>emt report</title><style>{style}</style>"
            f"</head><body><h1>Emergent misalignment report ({len(runs)} runs)</h1>"
            f"<h2>Headline table (per run)</h2>{html_table(table)}"
            f"<p>onset_*: onset step; peak_*: peak score (0-100); lead_checkpoints: {EARLY} before {LATE}, "
            f"in checkpoints; coherence_drop*: percent.</p>"
            f"<h2>Per domain and level (mean over runs)</h2>{html_table(by_domain)}"
            f"<h2>Methods</h2><p>{methods_html}</p>"
            + (f"<p class='note'>{html.escape(missing_note)} (figures show \"no scores\" there)</p>" if missing_note else "")
            + f"<h2>Provenance</h2>{html_table(prov)}<h2>Figures</h2>{imgs}</body></html>")
    html_path = atomic.write_text(out_dir / "report.html", page)
    return {"md": md_path, "html": html_path, "csv": csv, "table_csv": table_csv, "figures": figs,
            "table": table, "summaries": summaries, "runs": [run_name(d) for d in runs]}


# ---------------------------------------------------------------------------------------------
# synthetic runs (tests, benchmarks, demos)


def write_synthetic_run(
    run_dir: str | Path, name: str, onsets: Mapping[str, int | None], n: int = 41, q: int = 4, s: int = 3,
    rise: float = 40.0, sigma: float = 2.0, seed: int = 0, judges: Sequence[str] = ("judge/model-a",),
    nan_traits: Sequence[str] = (),
) -> Path:
    """A ``<run_dir>/scores.h5`` through :func:`emt.store.consolidate`, from per-step result JSON
    files in the evaluation format; trait ``t`` steps up by ``rise`` at checkpoint ``onsets[t]``
    (None = never), steps 0, 2, 4, ... Traits in ``nan_traits`` get no score at all (a judge that
    never answered with a number). Returns the scores.h5 path."""
    from emt import store
    from emt.analysis import synthetic as syn

    run_dir = Path(run_dir)
    ev = run_dir / "eval-synthetic"
    ev.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for t, c in onsets.items():
        steps, x, _ = syn.samples(rng, n=n, q=q, s=s, c=c, rise=rise, sigma=sigma)
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
    attrs = {"run": name, "config_hash": "0123456789ab", "eval_hash": "synthetic", "git_commit": "deadbeefcafe",
             "git_dirty": False, "model": "synthetic", "config": "", "packages": {}}
    return store.consolidate(files, run_dir / SCORES_NAME, attrs, losses)
