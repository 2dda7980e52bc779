"""The study report: every run's scores.h5 -> headline table, figures, report.md/.html, tidy.csv.

Typical use::

    from emt.report.report import build_report
    paths = build_report(Path("outputs"), Path("outputs/report"))
    print(paths["html"])

``report.html`` is self-contained (figures embedded as base64 PNG) so it can be mailed or
attached to a ticket; ``report.md`` links the PNGs next to it. Every file is written through
:mod:`emt.core.atomic`, so a reader never sees a half-written report.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emt.analysis.diagnostics import correlation, matched_loss_table, run_diagnostics
from emt.analysis.metrics import lead_times_all_methods
from emt.analysis.online import replay
from emt.analysis.persona import ALARM_RISE, alarm_auroc
from emt.analysis.onset import (
    DEFAULT_METHOD, METHODS, onset_cusum, onset_foot, onset_glr, onset_piecewise, onset_ruptures, onset_threshold,
)
from emt.analysis.summary import EARLY, LATE, headline_table, run_identity, run_summary, tidy_table
from emt.analysis.uncertainty import paired_seed_comparison, pooled_seeds
from emt.core import atomic
from emt.report.figures import plot_all, plot_overlap, plot_persona, run_name
from emt.store import scores as store
from emt.store.activations import read_h5

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
    (``<name>-<hash>`` -> ``<name>``) so every run has a name for tables and figures.

    A file that cannot be read (truncated, not HDF5, missing groups) is reported in one line on
    stderr, naming it and the fix, and skipped: one bad run must not cost the report on the
    others. Raises :class:`NoScoresError` when no file could be read.
    """
    runs = []
    skipped = []
    for f in files:
        try:
            d = store.load(f, strings=False)  # numbers only: the report never reads the answers' text
        except (OSError, KeyError, ValueError) as exc:  # h5py: OSError (corrupt), KeyError (missing group)
            why = " ".join(str(exc).split()) or type(exc).__name__
            skipped.append(f"{f}: not a readable scores.h5 ({why}); skipped: rewrite it by consolidating the run "
                           "again (python launch/eval_array.py --run NAME, with the config of its evaluation)")
            print(f"warning: {skipped[-1]}", file=sys.stderr)
            continue
        if not run_name(d):
            d["attrs"]["run"] = _HASH_SUFFIX.sub("", Path(f).parent.name)
        d["path"] = str(f)
        runs.append(d)
    if not runs:
        raise NoScoresError(f"no readable scores.h5 among {len(files)} file(s):\n" + "\n".join(skipped))
    return runs


def tidy_frame(runs: Sequence[Mapping[str, Any]]) -> Any:
    """One row per (run, step, trait): ``run, domain, level, seed, step, trait, score, coherence,
    train_loss, heldout_loss`` (pandas DataFrame)."""
    import pandas as pd

    frames = []
    for d in runs:
        df = tidy_table(d)
        p = run_identity(d, run_name(d))
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
    fn = {"glr": onset_glr, "foot": onset_foot, "threshold": onset_threshold, "cusum": onset_cusum, "pelt": onset_ruptures,
          "binseg": onset_ruptures, "piecewise": onset_piecewise}.get(method)
    if fn is None:
        raise ValueError(f"unknown onset method {method!r}; choose one of {METHODS}")
    out = {k: p.default for k, p in inspect.signature(fn).parameters.items()
           if p.kind is p.KEYWORD_ONLY and k not in ("method", "se")}
    out.update(params or {})
    return out


def domain_table(table: Any, summaries: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """The headline table per (domain, level): run count, mean onset steps, lead time and coherence
    drop (seeds of one setting pooled), and with ``summaries`` (bootstrapped :func:`run_summary`
    results) the lead's interval and P(early first) from a two-level bootstrap over seeds and
    questions (:func:`emt.analysis.uncertainty.pooled_seeds`; one run: its own interval), plus
    with >= 3 seeds a paired comparison of the two onsets across seeds (mean lead, t interval,
    paired t-test and Wilcoxon p-values)."""
    num = [c for c in table.columns if c.startswith(("onset_", "lead_checkpoints", "coherence_drop"))
           and not c.endswith(("_lo", "_hi"))]
    t = table.copy()
    for c in num:
        t[c] = t[c].astype("float64")
    g = t.groupby(["domain", "level"], dropna=False, sort=True)
    out = g[num].mean()
    out.insert(0, "runs", g.size())
    out = out.reset_index()
    if summaries:
        groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
        for sm in summaries:
            groups.setdefault((sm.get("domain"), sm.get("level")), []).append(sm)
        extra = []
        for _, row in out.iterrows():
            key = (None if row["domain"] != row["domain"] else row["domain"], None if row["level"] != row["level"] else row["level"])
            sms = groups.get(key, [])
            comps = [sm["bootstrap"] for sm in sms if sm.get("bootstrap") is not None]
            sp = next((sm["lead_time"]["spacing"] for sm in sms if sm.get("lead_time")), 1.0)
            pooled = pooled_seeds(comps, sp) if comps else {"lo": None, "hi": None, "p_early_first": None}
            lts = [sm.get("lead_time") or {} for sm in sms]
            paired = paired_seed_comparison([x.get("onset_early") for x in lts], [x.get("onset_late") for x in lts], sp)
            extra.append({"lead_lo": pooled["lo"], "lead_hi": pooled["hi"], "p_early_first": pooled["p_early_first"],
                          "seeds_paired": paired["n"] if paired["t_p"] is not None else None,
                          "paired_t_p": paired["t_p"], "paired_wilcoxon_p": paired["wilcoxon_p"]})
        import pandas as pd

        ex = pd.DataFrame(extra, index=out.index).astype("float64")
        pos = list(out.columns).index("lead_checkpoints") + 1 if "lead_checkpoints" in out.columns else len(out.columns)
        for i, c in enumerate(ex.columns):
            out.insert(pos + i, c, ex[c])
    return out


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
            + html.escape((GLR_TEXT if method == "glr" else "") + INTERVAL_TEXT) +
            f"Scores are the NaN-aware mean trait score (0-100) over questions and samples of the default "
            f"judge; the lead time is onset({LATE}) - onset({EARLY}) in checkpoints (positive = {EARLY} "
            f"emerges first). Coherence drop is the percent drop of mean coherence from step 0 to the last "
            f"checkpoint, per prompt set. Bands in the trajectory figures are 95% normal intervals over "
            f"question means. Judge model(s): {html.escape(', '.join(judges) or 'unknown')}. "
            f"{n_runs} run(s).")


def diagnostics_tables(runs: Sequence[Mapping[str, Any]], diags: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The diagnostics section's tables (pandas DataFrames; empty when there is nothing to show):

    ``loss_alignment``: per run and trait, Pearson and Spearman r (95% CI) of held-out loss vs
    score across checkpoints; ``matched_loss``: per domain, each run's trait scores at the same
    held-out losses (levels every run of the domain reaches); ``schedules``: the same for the runs
    of a learning-schedule sweep (one domain and level, several schedules); ``predictor``: cross-validated
    ridge R^2 (95% CI) from the base model's prompt activations to each question's final score,
    per run, trait and layer; ``persona``: per run and trait, the confirmed pairs behind the
    vector, the correlation of its projection with the judge score, the onsets of both and the
    lead (:func:`emt.analysis.persona.persona_lead`); ``alarm``: per trait and layer, the AUROC of
    the projection as an alarm against the judge's verdict per checkpoint, pooled over the runs
    (:func:`emt.analysis.persona.alarm_auroc`).
    """
    import pandas as pd

    la, pr, pe = [], [], []
    for d in runs:
        name = run_name(d)
        dg = diags.get(name, {})
        for t, c in dg.get("loss_alignment", {}).items():
            p, sp = c["pearson"], c["spearman"]
            la.append({"run": name, "trait": t, "pearson_r": p["r"], "pearson_ci": _ci(p), "spearman_r": sp["r"],
                       "spearman_ci": _ci(sp), "n": p["n"]})
        for t, per_layer in dg.get("predictor", {}).items():
            for layer, r in per_layer.items():
                pr.append({"run": name, "trait": t, "layer": layer, "r2": r["r2"], "r2_ci": _ci(r), "questions": r["n"],
                           "alpha": r["alpha"]})
        for t, p in dg.get("persona", {}).items():
            mean = np.asarray(p.get("mean", []), dtype=np.float64)
            layers = list(p.get("layers", []))
            score = np.asarray(d["traits"][t]["score"], dtype=np.float64)
            for i in range(mean.shape[1] if mean.ndim == 2 else 0):
                layer = layers[i] if i < len(layers) else i
                c = correlation(mean[:, i], score)
                ld = dg.get("persona_lead", {}).get(t, {}).get(int(layer), {})
                pe.append({"run": name, "trait": t, "layer": layer,
                           "pairs_kept": f"{p.get('kept', '?')}/{p.get('pairs', '?')}",
                           "r_projection_vs_judge": c["r"], "r_ci": _ci(c),
                           "onset_projection": ld.get("persona_onset"),
                           "onset_projection_ci": _ci({"lo": ld.get("persona_lo"), "hi": ld.get("persona_hi")}),
                           "onset_judge": ld.get("judge_onset"),
                           "lead_checkpoints": ld.get("lead"),
                           "lead_ci": _ci({"lo": ld.get("lead_lo"), "hi": ld.get("lead_hi")})})
    def matched(groups: Mapping[str, Sequence[Mapping[str, Any]]], label: str) -> Any:
        parts = []
        for key, ds in sorted(groups.items()):
            if len(ds) < 2:
                continue
            t = matched_loss_table(ds, names=[run_name(d) for d in ds])
            if t.empty:
                continue
            wide = t.pivot_table(index=["run", "trait"], columns="loss_level", values="score", dropna=False)
            wide.columns = [f"loss {c:.3g}" for c in wide.columns]
            wide = wide.reset_index()
            wide.insert(0, label, key)
            parts.append(wide)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    by_dom: dict[str, list[Mapping[str, Any]]] = {}
    by_sched: dict[str, list[Mapping[str, Any]]] = {}
    for d in runs:
        p = run_identity(d, run_name(d))
        if p["variant"] is None:
            by_dom.setdefault(p["domain"] or "runs", []).append(d)
        by_sched.setdefault(f"{p['domain']}_{p['level']}", []).append(d)
    # the schedule sweep: one domain and level under several schedules (the plain run included)
    sched = {k: v for k, v in by_sched.items()
             if any(run_identity(d, run_name(d))["variant"] for d in v)}
    alarm = []
    for t in sorted({t for dg in diags.values() for t in dg.get("persona", {})}):
        for layer, a in alarm_auroc(runs, t).items():
            ok = np.isfinite(a["auroc"])  # three decimals: these sit near 1, where 0.1 hides everything
            alarm.append({"trait": t, "layer": layer, "auroc": f"{a['auroc']:.3f}" if ok else None,
                          "auroc_ci": f"[{a['lo']:.3f}, {a['hi']:.3f}]" if ok and a["lo"] is not None else "–",
                          "positive_checkpoints": f"{a['positives']}/{a['checkpoints']}", "runs": a["runs"],
                          "resampled": a["resampled"]})
    return {"loss_alignment": pd.DataFrame(la), "predictor": pd.DataFrame(pr), "persona": pd.DataFrame(pe),
            "alarm": pd.DataFrame(alarm), "matched_loss": matched(by_dom, "domain"), "schedules": matched(sched, "run group")}


def _ci(r: Mapping[str, Any]) -> str:
    lo, hi = r.get("lo"), r.get("hi")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"[{lo:.2f}, {hi:.2f}]"


DIAGNOSTICS_TEXT = (
    "Loss vs alignment: correlation across checkpoints of the held-out in-domain loss with each trait "
    "score (negative r: the trait rises as the loss falls). Matched loss: each run's trait score at the "
    "first checkpoint where its held-out loss reaches a level that every run of the domain reaches "
    "(schedule sweeps compare here: a lower score at the same loss is a safer minimum). Predictor: "
    "ridge regression (alpha by generalised cross-validation, 5-fold out-of-fold R^2, bootstrap CI) from "
    "the base model's last-prompt-token activations to each question's score over the last 10% of "
    "checkpoints. Overlap: mean squared cosine of the principal angles between the top-k subspaces of "
    "activation shifts from step 0 on training prompts and on evaluation prompts (1 = same, 0 = "
    "orthogonal). Persona: projection of the answers' response-token activations on the trait's persona "
    "vector (mean(pos) - mean(neg) over judge-confirmed system-prompt pairs on the base model), in percent of "
    "the vector's length (100 = as far as from the neg to the pos persona); its onset is the onset method's on "
    "the per-answer projections, the judge's on the same answers, and lead_checkpoints = judge onset - "
    "projection onset (positive: the activations moved first), with 95% intervals from one paired bootstrap "
    "over questions (1000 replicates). Alarm: the shift of a checkpoint's mean projection from step 0 as a "
    f"score for the judge's verdict (mean trait score at least {ALARM_RISE:g} points above step 0), AUROC over "
    "every run's checkpoints after step 0, interval from resampling whole runs (checkpoints with fewer than "
    "3 runs). Layers are hidden_states indices (0 = embeddings).")


def _diagnostics(runs: Sequence[Mapping[str, Any]], out_dir: Path, figures: bool) -> tuple[list[str], str, dict[str, list[Path]], dict[str, Any]]:
    """(markdown lines, html, figures, tables) of the diagnostics section."""
    diags = {}
    for d in runs:
        acts = read_h5(d["path"]) if d.get("activation_layers") and d.get("path") else None
        diags[run_name(d)] = run_diagnostics(d, acts)
    tables = diagnostics_tables(runs, diags)
    figs: dict[str, list[Path]] = {}
    if figures:
        for name, ps in (("persona", plot_persona(runs, diags, out_dir)), ("overlap", plot_overlap(runs, diags, out_dir))):
            if ps:
                figs[name] = ps
    titles = {"loss_alignment": "Loss vs alignment (per run)", "matched_loss": "Trait scores at matched held-out loss",
              "schedules": "Learning-schedule sweep at matched held-out loss",
              "predictor": "Activation-based predictor (R^2 of ridge, out of fold)",
              "persona": "Persona-vector projection vs judge score",
              "alarm": "Persona projection as an alarm (AUROC against the judge's verdict per checkpoint)"}
    has_acts = any(d.get("activation_layers") for d in runs)
    md = ["## Diagnostics", "", DIAGNOSTICS_TEXT, ""]
    h = [f"<h2>Diagnostics</h2><p>{html.escape(DIAGNOSTICS_TEXT)}</p>"]
    for key, title in titles.items():
        df = tables[key]
        if df.empty:
            why = ("no activations captured (set activations.layers)" if key in ("predictor", "persona", "alarm")
                   and not has_acts
                   else "no checkpoint after step 0 with a persona projection"
                   if key == "alarm" and not tables["persona"].empty
                   else "too few questions or checkpoints for a cross-validated fit" if key == "predictor"
                   else "no persona vector: the judge confirmed no (pos, neg) answer pair on the base model"
                   if key in ("persona", "alarm")
                   else "fewer than two runs per domain reach a common loss" if key == "matched_loss"
                   else "no schedule-sweep runs (launch/train.py --sweep schedules)" if key == "schedules" else "no data")
            md += [f"### {title}", "", f"_{why}_", ""]
            h.append(f"<h3>{html.escape(title)}</h3><p><i>{html.escape(why)}</i></p>")
        else:
            md += [f"### {title}", "", markdown_table(df), ""]
            h.append(f"<h3>{html.escape(title)}</h3>{html_table(df)}")
    pngs = [p for ps in figs.values() for p in ps if p.suffix == ".png"]
    md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    h += [f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
          f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
          for p in pngs]
    return md, "".join(h), figs, tables


GLR_TEXT = (
    "glr: a persistent rise is found by a likelihood-ratio test of one mean shift whose false-positive rate "
    "on a never-emerging series is alpha (its threshold simulated for the series length); the noise is each "
    "checkpoint's standard error from its answers (raised to the series' own local noise where larger); "
    "isolated one-checkpoint spikes are removed first; the onset is placed at the foot of the rise; "
    "effect_* is the rise in points (mean after the onset minus mean before). ")
INTERVAL_TEXT = (
    "Intervals: 95% percentile bootstrap over questions (1000 replicates unless stated), the two traits "
    "resampled independently; onset_*_lo/_hi bound the onset step, lead_lo/_hi the lead time in checkpoints, "
    "and p_early_first is the share of replicates (where both onsets exist) in which the early trait's onset "
    "comes first. Per domain and level, seeds are resampled too (two-level bootstrap), and with >= 3 seeds a "
    "paired comparison across seeds gives the t-test and Wilcoxon p-values of the lead. ")
WARNING_TEXT = (
    "The online detector (the onset method deciding with only the checkpoints seen so far, as the "
    "live monitor does; with glr, the calibrated alarm at its configured false-alarm rate per run) replayed "
    "over each finished run: the step at which the {early} alert would "
    "have fired, {late}'s onset on the whole run, and lead_checkpoints = {late} onset - {early} alert "
    "(positive: the warning came that many checkpoints ahead). Runs at the normal level have no "
    "misaligned data, so any alert there is a false alarm.")


def early_warning_tables(runs: Sequence[Mapping[str, Any]], method: str = DEFAULT_METHOD,
                         params: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(replay table, interventions table) for the report's early-warning section.

    The replay is :func:`emt.analysis.online.replay` of ``EARLY`` warning of ``LATE``; the
    interventions are the monitor's actions recorded in the runs' scores.h5 attributes.
    """
    import pandas as pd

    with_both = [d for d in runs if EARLY in d["traits"] and LATE in d["traits"]]
    rep = replay(with_both, EARLY, LATE, method, **dict(params or {})) if with_both else pd.DataFrame()
    rows = []
    for d in runs:
        a = d.get("attrs", {})
        if a.get("intervention_step") is None:
            continue
        rows.append({"run": run_name(d), "action": a.get("intervention_action"), "trait": a.get("intervention_trait"),
                     "onset_step": a.get("intervention_onset_step"), "detected_step": a.get("intervention_detected_step"),
                     "stopped_at_step": a.get("intervention_step"), "rollback_step": a.get("intervention_rollback_step")})
    return rep, pd.DataFrame(rows)


def _early_warning(runs: Sequence[Mapping[str, Any]], method: str, params: Mapping[str, Any]) -> tuple[list[str], str, Any]:
    """(markdown lines, html, replay table) of the early-warning section."""
    rep, inter = early_warning_tables(runs, method, params)
    text = WARNING_TEXT.format(early=EARLY, late=LATE)
    md = ["## Early warning (online detector replayed)", "", text, ""]
    h = [f"<h2>Early warning (online detector replayed)</h2><p>{html.escape(text)}</p>"]
    if rep.empty:
        why = f"no run has both {EARLY} and {LATE} scores"
        md += [f"_{why}_", ""]
        h.append(f"<p><i>{html.escape(why)}</i></p>")
    else:
        n_in, n_lead = int(rep["in_time"].sum()), int(rep["lead_checkpoints"].notna().sum())
        normal = rep[rep["level"] == "normal"]
        line = (f"{EARLY} warned before {LATE}'s onset in {n_in} of {n_lead} runs where both were found; "
                f"false alarms on normal-level runs: {int(normal['false_alarm'].sum())} of {len(normal)}.")
        md += [markdown_table(rep), "", line, ""]
        h += [html_table(rep), f"<p>{html.escape(line)}</p>"]
    if not inter.empty:
        md += ["### Interventions by the live monitor", "", markdown_table(inter), ""]
        h += ["<h3>Interventions by the live monitor</h3>", html_table(inter)]
    return md, "".join(h), rep


def _write_csvs(runs: Sequence[Mapping[str, Any]], table: Any, out_dir: Path) -> tuple[Path, Path]:
    """``tidy.csv`` (one row per score) and ``headline.csv`` (the headline table); their paths."""
    csv = out_dir / "tidy.csv"
    with atomic.atomic_path(csv, suffix=".csv") as tmp:
        tidy_frame(runs).to_csv(tmp, index=False)
    table_csv = out_dir / "headline.csv"
    with atomic.atomic_path(table_csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return csv, table_csv


def _report_html(n_runs: int, table: Any, by_domain: Any, methods_html: str, missing_note: str, warn_html: str,
                 prov: Any, pngs: Sequence[Path], diag_html: str) -> str:
    """The self-contained report.html page (figures embedded as base64 PNG)."""
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
            f"</head><body><h1>Emergent misalignment report ({n_runs} runs)</h1>"
            f"<h2>Headline table (per run)</h2>{html_table(table)}"
            f"<p>onset_*: onset step; peak_*: peak score (0-100); lead_checkpoints: {EARLY} before {LATE}, "
            f"in checkpoints; coherence_drop*: percent.</p>"
            f"<h2>Per domain and level (mean over runs)</h2>{html_table(by_domain)}"
            f"<h2>Methods</h2><p>{methods_html}</p>"
            + (f"<p class='note'>{html.escape(missing_note)} (figures show \"no scores\" there)</p>" if missing_note else "")
            + warn_html + f"<h2>Provenance</h2>{html_table(prov)}<h2>Figures</h2>{imgs}{diag_html}</body></html>")
    return page


def build_report(
    root: str | Path, out_dir: str | Path, method: str = DEFAULT_METHOD,
    params: Mapping[str, Any] | None = None, figures: bool = True, n_boot: int = 1000,
) -> dict[str, Any]:
    """Report on every scores.h5 under ``root`` (an output root, its ``runs/`` dir or one run).

    Args:
        root: where to look for ``scores.h5`` files (recursively).
        out_dir: where the report goes (created).
        method, params: onset method and its parameters for the table and the onset markers; the
            lead-time figure shows every method with its defaults.
        figures: False skips the figures (table, markdown, HTML and CSV only).
        n_boot: bootstrap replicates for the onset and lead intervals (0: none).

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
    summaries = {run_name(d): run_summary(d, method=method, run=run_name(d), n_boot=n_boot, **params) for d in runs}
    table = headline_table(list(summaries.values()))
    by_domain = domain_table(table, list(summaries.values()))
    lead = {run_name(d): lead_times_all_methods(d["steps"], d["traits"][EARLY]["score"], d["traits"][LATE]["score"])
            for d in runs if EARLY in d["traits"] and LATE in d["traits"]}
    figs = plot_all(runs, out_dir, summaries, method, lead=lead) if figures else {}
    pngs = [p for ps in figs.values() for p in ps if p.suffix == ".png"]

    csv, table_csv = _write_csvs(runs, table, out_dir)

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
    warn_md, warn_html, warning = _early_warning(runs, method, params)
    md += warn_md
    md += ["## Provenance", "", markdown_table(prov), "", "## Figures", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    diag_md, diag_html, diag_figs, diag_tables = _diagnostics(runs, out_dir, figures)
    figs.update(diag_figs)
    md += diag_md
    md_path = atomic.write_text(out_dir / "report.md", "\n".join(md))

    page = _report_html(len(runs), table, by_domain, methods_html, missing_note, warn_html, prov, pngs, diag_html)
    html_path = atomic.write_text(out_dir / "report.html", page)
    return {"md": md_path, "html": html_path, "csv": csv, "table_csv": table_csv, "figures": figs,
            "table": table, "by_domain": by_domain, "summaries": summaries, "runs": [run_name(d) for d in runs], "diagnostics": diag_tables,
            "early_warning": warning}
