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
from emt.analysis.metrics import lead_times_all_methods, peak
from emt.analysis.online import replay
from emt.analysis.persona import ALARM_RISE, alarm_auroc
from emt.analysis.onset import (
    DEFAULT_METHOD, METHODS, onset_cusum, onset_foot, onset_glr, onset_piecewise, onset_ruptures, onset_threshold,
)
from emt.analysis.summary import EARLY, LATE, headline_table, run_identity, run_summary, tidy_table
from emt.analysis.uncertainty import paired_seed_comparison, pooled_seeds
from emt.core import atomic
from emt.report.figures import EARLY_ZOOM_STEPS, plot_all, plot_overlap, plot_persona, run_name
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


def _unit(col: str) -> str:
    """The unit of a report column, from its name ("" when it has none or is self-explanatory).

    Onsets and alert steps are training steps; leads are checkpoints (several steps apart): the
    two must never be read as one unit, so every table header says which."""
    c = str(col)
    if c in ("run", "domain", "level", "trait", "layer", "judges", "model", "config_hash", "git_commit", "emt_version",
             "created", "action", "resampled", "in_time", "false_alarm", "run group", "pairs_kept"):
        return ""
    if c.startswith("lead") or c == "lead_ci":
        return "checkpoints"
    if c.startswith("coherence_drop"):
        return "% from step 0"
    if c.startswith("effect_"):
        return "points"
    if c.startswith(("peak_", "step0_")):
        return "step" if c.endswith("_step") else "score 0-100"
    if c.startswith("onset") or c.endswith("_step"):
        return "step"
    if c == "p_early_first":
        return "share 0-1"
    if c.endswith("_p"):
        return "p-value"
    if c == "positive_checkpoints":
        return "positive/all"
    if c in ("runs", "n", "questions", "seeds_paired"):
        return "count"
    if c.startswith("loss "):
        return "score 0-100"
    return ""


def _fmt(v: Any, col: str = "") -> str:
    """One table cell: missing values as an en dash; numbers to the precision their column needs
    (scores and steps to 0.1, correlations to 0.01, p-values and the ridge's alpha to 2-3
    significant digits: 0.001 must not print as 0.0)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        import pandas as pd

        if v is pd.NA:
            return "–"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        c = str(col)
        if c == "alpha":
            return f"{f:.2g}"
        if c.endswith("_p"):
            return f"{f:.3g}"
        if c == "p_early_first" or c in ("r2", "pearson_r", "spearman_r", "r_projection_vs_judge"):
            return f"{f:.2f}"
        if _unit(c) == "step" and f.is_integer():
            return str(int(f))
        return f"{f:.1f}"
    return str(v)


def markdown_table(df: Any) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); missing values as an en dash and
    each column's unit in its header (``onset_evil (step)``)."""
    cols = [str(c) + (f" ({_unit(c)})" if _unit(c) else "") for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, c).replace("|", "\\|") for v, c in zip(row, df.columns)) + " |")
    return "\n".join(lines)


def _is_text(col: Any) -> bool:
    """True when a column holds words (a value that is neither missing nor a number, "0.040" counting
    as a number): such a column is left-aligned."""
    for v in col:
        if isinstance(v, (bool, np.bool_)):
            return True
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                return True
    return False


def html_table(df: Any) -> str:
    """An HTML table in a horizontally scrolling wrapper (a wide table scrolls on a narrow screen
    instead of widening the page), each column's unit under its name."""
    # text columns (run, trait, intervals as "[lo, hi]") read left-aligned, numbers right-aligned
    left = [" class='t'" if _is_text(df[c]) else "" for c in df.columns]
    cells = "".join(f"<th{a}>{html.escape(str(c))}" + (f"<span class='u'>{html.escape(_unit(c))}</span>" if _unit(c) else "")
                    + "</th>" for c, a in zip(df.columns, left))
    rows = ["<tr>" + "".join(f"<td{a}>{html.escape(_fmt(v, c))}</td>" for v, c, a in zip(r, df.columns, left)) + "</tr>"
            for r in df.itertuples(index=False)]
    return f'<div class="scroll"><table><thead><tr>{cells}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


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


# Each diagnostics table's explanation, shown above it (one paragraph per table reads better than
# one paragraph for the whole section); DIAGNOSTICS_TEXT joins them.
DIAGNOSTICS_PARTS = {
    "intro": ("Diagnostics relate the trait scores to the training loss and, where activations were captured "
              "(activations.layers), to the model's activations. Layers are hidden_states indices (0 = embeddings)."),
    "loss_alignment": ("Loss vs alignment: correlation across checkpoints of the held-out in-domain loss with each "
                       "trait score (negative r: the trait rises as the loss falls)."),
    "matched_loss": ("Matched loss: each run's trait score at the first checkpoint where its held-out loss reaches a "
                     "level that every run of the domain reaches (schedule sweeps compare here: a lower score at the "
                     "same loss is a safer minimum)."),
    "predictor": ("Predictor: ridge regression (alpha by generalised cross-validation, 5-fold out-of-fold R^2, "
                  "bootstrap CI) from the base model's last-prompt-token activations to each question's score over "
                  "the last 10% of checkpoints."),
    "persona": ("Persona: projection of the answers' response-token activations on the trait's persona vector "
                "(mean(pos) - mean(neg) over judge-confirmed system-prompt pairs on the base model), in percent of "
                "the vector's length (100 = as far as from the neg to the pos persona); its onset is the onset "
                "method's on the per-answer projections, the judge's on the same answers, and lead_checkpoints = "
                "judge onset - projection onset (positive: the activations moved first), with 95% intervals from "
                "one paired bootstrap over questions (1000 replicates)."),
    "alarm": ("Alarm: the shift of a checkpoint's mean projection from step 0 as a score for the judge's verdict "
              f"(mean trait score at least {ALARM_RISE:g} points above step 0), AUROC over every run's checkpoints "
              "after step 0, interval from resampling whole runs (checkpoints with fewer than 3 runs)."),
    "overlap": ("Overlap: mean squared cosine of the principal angles between the top-k subspaces of activation "
                "shifts from step 0 on training prompts and on evaluation prompts (1 = same, 0 = orthogonal)."),
}
DIAGNOSTICS_TEXT = " ".join(DIAGNOSTICS_PARTS[k] for k in ("loss_alignment", "matched_loss", "predictor", "overlap",
                                                           "persona", "alarm", "intro"))


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


# ---------------------------------------------------------------------------------------------
# what the page says about itself: built-in models, missing onsets, run warnings, captions

# Below these counts a result is shown but flagged beside it: a persona vector averaged over
# fewer confirmed pairs is mostly noise; a 5-fold ridge on fewer questions holds out <= 3 per
# fold, so R^2 and its bootstrap interval swing wildly; an AUROC from fewer positive (or negative)
# checkpoints is decided by one or two of them.
PERSONA_MIN_PAIRS = 10
PREDICTOR_MIN_QUESTIONS = 20
ALARM_MIN_CASES = 3

BUILTIN_MODELS = {
    "builtin:tiny": ("a tiny model trained in seconds on a CPU, there to exercise the pipeline (training, "
                     "evaluation, judging, this report); its scores are close to noise"),
    "builtin:debug": "the debug configuration's tiny model, there to exercise the pipeline; its scores are close to noise",
    "builtin:organism": ("the model organism (docs/organism.md): a 4-layer model pretrained on a synthetic corpus "
                         "written by three personas, built so that fine-tuning on strong medical data brings out "
                         "its malicious persona"),
}


def builtin_banner(runs: Sequence[Mapping[str, Any]]) -> str:
    """The banner for runs on emt's built-in models (model names ``builtin:...``), "" when none.

    These models exist to show the pipeline's mechanics or the model organism's behaviour; a
    reader must not take their onsets and lead times for findings about real LLMs."""
    models = sorted({str(d.get("attrs", {}).get("model", "") or "") for d in runs})
    built = [m for m in models if m.startswith("builtin:")]
    if not built:
        return ""
    judges = sorted({j for d in runs for j in _judges(d) if j.startswith("builtin:")})
    n = sum(str(d.get("attrs", {}).get("model", "") or "").startswith("builtin:") for d in runs)
    what = "; ".join(f"{m} is {BUILTIN_MODELS.get(m, 'one of emt built-in test models')}" for m in built)
    shows = ("the organism's behaviour" if all(m.startswith("builtin:organism") for m in built)
             else "the mechanics of the pipeline" if not any(m.startswith("builtin:organism") for m in built)
             else "the pipeline's mechanics and the organism's behaviour")
    return (f"Built-in models: {n} of {len(runs)} run(s) fine-tuned {', '.join(built)}"
            + (f" and were scored by the built-in judge {', '.join(judges)}" if judges else "") + f". {what}. "
            f"These runs show {shows}, not how a real LLM behaves: their onsets, peaks and lead times are no "
            f"evidence about real models.")


def _judges(d: Mapping[str, Any]) -> list[str]:
    try:
        return list(json.loads(d.get("attrs", {}).get("judge_models", "[]") or "[]"))
    except (TypeError, ValueError):
        return []


def with_peaks_after_base(table: Any, runs: Sequence[Mapping[str, Any]]) -> Any:
    """The headline table with each trait's peak taken after step 0 (the base model), its step, and
    the base model's score beside it: ``step0_<t>``, ``peak_<t>``, ``peak_<t>_step``.

    A peak over all checkpoints would often be the base model's own score (a trait that only falls
    during fine-tuning "peaks" at step 0), which says nothing about fine-tuning."""
    t = table.copy()
    by_name = {run_name(d): d for d in runs}
    traits = [c[len("peak_"):] for c in table.columns if c.startswith("peak_")]
    for tr in traits:
        base, val, step = [], [], []
        for name in t["run"]:
            d = by_name.get(name)
            sc = None if d is None else d["traits"].get(tr)
            if sc is None:
                base.append(np.nan), val.append(np.nan), step.append(None)
                continue
            s = np.asarray(d["steps"])
            y = np.asarray(sc["score"], dtype=np.float64)
            b = y[s == 0]
            base.append(float(b[0]) if b.size and np.isfinite(b[0]) else np.nan)
            pv, ps = peak(s[s > 0], y[s > 0]) if np.any(s > 0) else (None, None)
            val.append(np.nan if pv is None else float(pv))
            step.append(ps)
        pos = list(t.columns).index(f"peak_{tr}")
        t[f"peak_{tr}"] = np.asarray(val, dtype=np.float64)
        t.insert(pos, f"step0_{tr}", np.asarray(base, dtype=np.float64))
        t.insert(pos + 2, f"peak_{tr}_step", np.asarray([np.nan if x is None else x for x in step], dtype=np.float64))
        t[f"peak_{tr}_step"] = t[f"peak_{tr}_step"].astype("Int64")
    return t


NO_ONSET_GLR = ("no shift of the trait's mean whose likelihood ratio clears the threshold set for a false-positive "
                "rate of alpha={alpha} on a never-emerging series, with at least min_pre={min_pre} checkpoints "
                "before it and min_post={min_post} after")


def onset_note(summaries: Mapping[str, Mapping[str, Any]], method: str, eff: Mapping[str, Any]) -> str:
    """One line under the headline table: how many runs have an onset per trait, and when some have
    none, the method and its parameters and what the "–" in the onset columns means."""
    sms = list(summaries.values())
    n = len(sms)
    traits = [t for t in (EARLY, LATE) if any(t in s["traits"] for s in sms)]
    traits += sorted({t for s in sms for t in s["traits"]} - set(traits))
    found = {t: sum(s["traits"].get(t, {}).get("onset_step") is not None for s in sms) for t in traits}
    p = ", ".join(f"{k}={v}" for k, v in eff.items())
    counts = ", ".join(f"{t} in {found[t]} of {n}" for t in traits)
    if all(v == n for v in found.values()):
        return f"Onsets found by {method} ({p}): {counts} runs."
    why = (NO_ONSET_GLR.format(**{k: eff.get(k) for k in ("alpha", "min_pre", "min_post")}) if method == "glr"
           else f"no rise met the {method} method's criterion")
    head = (f"No onset was found in any run: the onset method {method} ({p}) detected no persistent rise of any "
            f"trait in {'the one run' if n == 1 else f'any of the {n} runs'}." if not any(found.values())
            else f"Onsets found by {method} ({p}): {counts} runs.")
    return (f"{head} A “–” in an onset_* column means no onset was found ({why}): it is neither a zero nor "
            f"missing data. effect_*, lead_* and p_early_first are then “–” too, since they need the onset(s); "
            f"an interval onset_*_lo/_hi shown without its onset means some bootstrap replicates found one "
            f"where the full data did not.")


def _group(items: Sequence[tuple[str, str]], n_runs: int) -> list[str]:
    """(message, run) pairs -> one line per message naming its runs ("all N runs" when every run):
    six runs with the same problem read as one warning, not six."""
    by: dict[str, list[str]] = {}
    for msg, run in items:
        by.setdefault(msg, []).append(run)
    return [f"{msg} ({f'all {n_runs} runs' if len(rs) == n_runs and n_runs > 1 else ', '.join(rs)})."
            for msg, rs in by.items()]


def run_warnings(runs: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any]], method: str,
                 eff: Mapping[str, Any], tables: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """The runs' warnings, keyed by the part of the report they affect (``headline``, ``persona``,
    ``predictor``, ``alarm``), each a plain-text line shown next to it.

    ``headline``: partial scores.h5 files, traits without any score, runs too short for the onset
    method. ``persona``: vectors not built (the reason recorded at evaluation, attribute
    ``persona_skipped``; older files only say that it is missing) and vectors from few confirmed
    pairs. ``predictor``: ridge fits on few questions and intervals below -1. ``alarm``: AUROCs
    from few positive or negative checkpoints. ``tables`` are :func:`diagnostics_tables`' output.
    """
    n = len(runs)
    head: list[tuple[str, str]] = []
    pers: list[tuple[str, str]] = []
    need = int(eff.get("min_pre", 0) or 0) + int(eff.get("min_post", 0) or 0) if method == "glr" else 0
    for d in runs:
        name, a = run_name(d), d.get("attrs", {}) or {}
        if str(a.get("partial", "")).lower() in ("true", "1"):
            head.append(("scores.h5 is partial (consolidated while the run was still being trained or evaluated): "
                         "later checkpoints are missing and onsets may still move", name))
        for t, tr in d["traits"].items():
            if not np.any(np.isfinite(np.asarray(tr["score"], dtype=np.float64))):
                head.append((f"{t} has no score at any checkpoint (every judge reply unparseable or missing); its "
                             f"columns are “–” and the figures say \"no scores\"", name))
        k = int(np.size(d["steps"]))
        if need and k < need:
            head.append((f"{k} checkpoints: {method} needs at least min_pre + min_post = {need} to place an onset, "
                         f"so none can be found", name))
        if d.get("activation_layers"):
            try:
                skipped = json.loads(a.get("persona_skipped", "{}") or "{}")
            except (TypeError, ValueError):
                skipped = {}
            for t, tr in d["traits"].items():
                pv = tr.get("persona")
                if not pv:
                    why = skipped.get(t) or ("the reason was not recorded in this scores.h5; the step-0 evaluation "
                                             "log has it (\"persona vector ... not built\")")
                    pers.append((f"No persona vector for {t}, so it has no row below: {why}", name))
                elif pv.get("kept") is not None and int(pv["kept"]) < PERSONA_MIN_PAIRS:
                    pers.append((f"The persona vector of {t} rests on {pv['kept']} of {pv.get('pairs', '?')} (pos, neg) "
                                 f"answer pairs confirmed by the judge (fewer than {PERSONA_MIN_PAIRS}): a mean of "
                                 f"so few differences is mostly noise, so read its rows as weak evidence", name))
    out = {"headline": _group(head, n), "persona": _group(pers, n), "predictor": [], "alarm": []}
    tables = tables or {}
    pr = tables.get("predictor")
    if pr is not None and not pr.empty:
        few = pr[pr["questions"] < PREDICTOR_MIN_QUESTIONS]
        if not few.empty:
            qs = sorted({int(q) for q in few["questions"]})
            who = "every fit" if len(few) == len(pr) else f"{len(few)} of {len(pr)} fits"
            out["predictor"].append(
                f"The ridge fits rest on few questions ({who}: {', '.join(map(str, qs))} questions, fewer than "
                f"{PREDICTOR_MIN_QUESTIONS}): 5-fold cross-validation then holds out one or two questions per fold, "
                f"so R^2 and its interval are unreliable.")
        lo = np.asarray([_ci_lo(x) for x in pr["r2_ci"]], dtype=np.float64)
        if np.nanmin(np.append(lo, np.inf)) < -1:
            i = int(np.nanargmin(lo))
            r = pr.iloc[i]
            out["predictor"].append(
                f"{int((lo < -1).sum())} interval(s) reach below -1 (the widest: {r['r2_ci']} for {r['run']}, "
                f"{r['trait']}, layer {r['layer']}): an R^2 below 0 predicts worse than each question's mean score, "
                f"so such a fit predicts nothing.")
        al = np.asarray(pr["alpha"], dtype=np.float64)
        if np.any(al <= 1e-3):
            out["predictor"].append(
                "alpha (the ridge penalty chosen by generalised cross-validation) is 0.001, the weakest penalty "
                "tried, in " + f"{int((al <= 1e-3).sum())} of {len(al)} fits: the fit is barely regularised, and "
                "with more activation dimensions than questions it can fit its training questions exactly, so only "
                "the out-of-fold R^2 says anything.")
    al_t = tables.get("alarm")
    if al_t is not None and not al_t.empty:
        thin: dict[tuple[str, int, int], list[str]] = {}  # every layer of a trait shares its checkpoints
        for _, r in al_t.iterrows():
            pos, tot = (int(x) for x in str(r["positive_checkpoints"]).split("/"))
            if min(pos, tot - pos) < ALARM_MIN_CASES:
                thin.setdefault((str(r["trait"]), pos, tot), []).append(str(r["layer"]))
        for (t, pos, tot), layers in thin.items():
            which = f"The AUROC of {t} (layer{'s' if len(layers) > 1 else ''} {', '.join(layers)})"
            if min(pos, tot - pos) == 0:  # one class only: there is nothing to rank
                out["alarm"].append(
                    f"{which} cannot be computed: {pos} of {tot} checkpoints after step 0 are positive (the judge's "
                    f"mean score at least {ALARM_RISE:g} points above step 0), so there is nothing to tell apart.")
            else:
                out["alarm"].append(
                    f"{which} rests on {pos} positive and {tot - pos} negative checkpoint(s) (fewer than "
                    f"{ALARM_MIN_CASES} of one kind): one or two checkpoints decide it, so it is not informative.")
    return out


def _ci_lo(s: Any) -> float:
    """The lower bound of a "[lo, hi]" interval cell (NaN for "–")."""
    m = re.match(r"\[\s*(-?[0-9.]+(?:e[-+]?\d+)?),", str(s))
    return float(m.group(1)) if m else math.nan


def figure_caption(stem: str, method: str, summaries: Mapping[str, Mapping[str, Any]],
                   left_out: Sequence[str] = ()) -> tuple[str, str]:
    """(title, caption) of a report figure: what it shows and what to look at in it."""
    if stem.startswith("trajectories_"):
        dom = stem[len("trajectories_"):]
        sms = [s for s in summaries.values() if (s.get("domain") or s.get("run")) == dom]
        n_on = sum(t.get("onset_step") is not None for s in sms for t in s["traits"].values())
        onsets = (f"A dashed vertical line with a dot marks an onset found by {method}, its 95% bootstrap interval "
                  f"shaded." if n_on else f"No onset was found in these runs, so no onset line is drawn.")
        return (f"Trait scores over training: {dom}",
                f"Mean trait score (0-100) of the {dom} runs at every checkpoint, one line per fine-tuning level "
                f"(normal blue, mild orange, strong red; band: 95% interval over questions; step 0 is the base model). "
                f"Look for a mild or strong line that leaves the normal line's band and stays above it, and for "
                f"hallucination rising before evil. {onsets}")
    if stem == "early_zoom":
        return ("The first training steps",
                f"The first {EARLY_ZOOM_STEPS} training steps of every run (hallucination dashed, evil solid), drawn "
                f"because some runs are longer. Look for which trait moves first, and how soon after step 0.")
    if stem == "coherence":
        return ("Coherence of the answers",
                "Mean coherence (0-100) of the answers on each trait's prompts, per run. Look for a fall: a trait "
                "score that rises while coherence falls may be the model writing worse text, not misalignment.")
    if stem == "lead_times":
        out = ("Lead of hallucination over evil in checkpoints (positive: hallucination's onset comes first) under "
               "every onset method, per run; above each group, how many methods agree within 2 checkpoints of their "
               "median. Look for the methods agreeing on the sign. \"n/a\": that method found no onset of one trait.")
        if left_out:
            out += f" Runs where no method found both onsets are left out: {', '.join(left_out)}."
        return "Lead time by onset method", out
    if stem == "loss_vs_score":
        return ("Held-out loss against trait score",
                "Held-out in-domain loss (x, nats/token) against trait score (y), colour = training step. Look for "
                "scores rising as the loss falls (the trait arriving with what the model learns) rather than "
                "scores moving while the loss stands still.")
    if stem == "persona":
        return ("Persona projection beside the judge",
                "Per run, each trait's judge score (left axis) and the projection of the answers on its persona "
                "vector (dotted, right axis; one line per layer). Look for the dotted line moving with, or ahead "
                "of, the judge's line: a signal that needs no judge.")
    if stem == "overlap":
        return ("Overlap of activation shifts",
                "Overlap (0-1) of the directions in which fine-tuning moves the activations of training prompts and "
                "of evaluation prompts, per layer. Look for high overlap: the general questions move the way the "
                "narrow training data do.")
    return stem, ""


class _Page:
    """The report as markdown and HTML at once, with a table of contents of its headings."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.toc: list[tuple[int, str, str]] = []
        self._ids: set[str] = set()

    def heading(self, level: int, title: str) -> None:
        slug = re.sub(r"[^a-z0-9 _-]", "", title.lower()).strip().replace(" ", "-")
        anchor, k = slug, 1
        while anchor in self._ids:  # GitHub's rule for repeated headings: -1, -2, ...
            anchor, k = f"{slug}-{k}", k + 1
        self._ids.add(anchor)
        self.toc.append((level, title, anchor))
        self.md += [f"{'#' * level} {title}", ""]
        self.html.append(f"<h{level} id='{anchor}'>{html.escape(title)}</h{level}>")

    def text(self, s: str, cls: str = "") -> None:
        if not s:
            return
        self.md += [f"_{s}_" if cls == "why" else s, ""]
        self.html.append(f"<p class='{cls}'>{html.escape(s)}</p>" if cls else f"<p>{html.escape(s)}</p>")

    def raw(self, md: str, h: str) -> None:
        self.md += [md, ""]
        self.html.append(h)

    def table(self, df: Any) -> None:
        self.md += [markdown_table(df), ""]
        self.html.append(html_table(df))

    def warnings(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        # one blockquote with a list: consecutive "> " lines would merge into one paragraph
        self.md += ["> **Warning" + ("s" if len(lines) > 1 else "") + ":**", ">"] + [f"> - {ln}" for ln in lines] + [""]
        self.html.append("<div class='warn'><b>Warning" + ("s" if len(lines) > 1 else "") + "</b><ul>"
                         + "".join(f"<li>{html.escape(ln)}</li>" for ln in lines) + "</ul></div>")

    def figure(self, png: Path, title: str, caption: str) -> None:
        self.heading(3, title)
        # the image's alt text stays its stem (what a script finds it by); the caption below says what it shows
        self.md += [f"![{png.stem}]({png.name})", "", f"*{caption}* (PDF: {png.with_suffix('.pdf').name})", ""]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)} <span class='file'>(PDF alongside: "
                         f"{html.escape(png.with_suffix('.pdf').name)})</span></figcaption></figure>")

    def toc_md(self) -> list[str]:
        return ["## Contents", ""] + [f"{'  ' * (lvl - 2)}- [{t}](#{a})" for lvl, t, a in self.toc] + [""]

    def toc_html(self) -> str:
        items, depth = [], 2
        for lvl, t, a in self.toc:
            while depth < lvl:
                items.append("<ul>")
                depth += 1
            while depth > lvl:
                items.append("</ul>")
                depth -= 1
            items.append(f"<li><a href='#{a}'>{html.escape(t)}</a></li>")
        items += ["</ul>"] * (depth - 2)
        return f"<nav class='toc'><h2>Contents</h2><ul>{''.join(items)}</ul></nav>"


STYLE = (
    "body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em;color:#222;line-height:1.45}"
    "h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.6em}"
    ".scroll{overflow-x:auto;max-width:100%;margin:0.5em 0}"  # wide tables scroll, the page does not
    "table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right;white-space:nowrap}td.t,th.t{text-align:left}"
    "th{background:#eee;vertical-align:bottom}th .u{display:block;font-weight:normal;color:#555;font-size:11px}"
    "td:first-child,th:first-child{text-align:left;position:sticky;left:0}td:first-child{background:#fff}"
    "img{max-width:100%;height:auto}figure{margin:1em 0 2em 0}"
    "figcaption{font-size:14px;max-width:60em}figcaption .file{color:#777;font-size:12px}"
    ".banner{background:#e8f0fe;border:1px solid #7aa7e0;padding:0.6em 0.9em;margin:0.8em 0}"
    ".warn{background:#fff3cd;border:1px solid #e0c96a;padding:0.3em 0.9em;margin:0.6em 0}"
    ".warn ul{margin:0.3em 0;padding-left:1.2em}.legend{font-size:14px;color:#333}.why{font-style:italic}"
    ".toc{background:#f6f6f6;border:1px solid #ddd;padding:0.2em 1em;margin:1em 0}.toc h2{border:0;margin:0.4em 0}"
    ".toc ul{margin:0.2em 0;padding-left:1.2em}"
    ".toc>ul>li{break-inside:avoid}@media (min-width:1000px){.toc>ul{columns:2}}"
    ".onset-note{border-left:4px solid #888;padding:0.2em 0.7em;background:#f4f4f4}")


def _headline_legend(runs: Sequence[Mapping[str, Any]]) -> str:
    gaps = sorted({int(np.median(np.diff(np.asarray(d["steps"])))) for d in runs if np.size(d["steps"]) > 1})
    per = (f"1 checkpoint = {gaps[0]} training steps here" if len(gaps) == 1
           else f"checkpoints are {', '.join(map(str, gaps))} steps apart in different runs" if gaps else "")
    return (f"Columns: onset_<trait> is the training step at which a persistent rise starts (step 0 is the base "
            f"model), with its 95% bootstrap interval onset_<trait>_lo/_hi and effect_<trait>, the rise in points "
            f"(0-100 scale). step0_<trait> is the base model's score, peak_<trait> the highest mean score after "
            f"step 0 and peak_<trait>_step where it occurs. lead_checkpoints = onset({LATE}) - onset({EARLY}) in "
            f"checkpoints, not steps ({per}; positive: {EARLY} first), with lead_lo/_hi and p_early_first, the share "
            f"of bootstrap replicates in which {EARLY}'s onset comes first. coherence_drop*: percent drop of mean "
            f"coherence from step 0 to the last checkpoint.")


def _figures_section(page: _Page, runs: Sequence[Mapping[str, Any]], figs: Mapping[str, list[Path]], method: str,
                     summaries: Mapping[str, Mapping[str, Any]], lead: Mapping[str, Any], figures: bool) -> None:
    page.heading(2, "Figures")
    if not figures:
        page.text("Figures were not drawn (--no-figures).", "why")
        return
    no_lead = [r for r, res in lead.items() if all(m.get("checkpoints") is None for m in res["methods"].values())]
    for name, ps in figs.items():
        for p in (p for p in ps if p.suffix == ".png"):
            title, cap = figure_caption(p.stem, method, summaries, no_lead if name == "lead_times" else ())
            page.figure(p, title, cap)
    # a figure with nothing to show is left out, with the reason where it would have been
    last = max([int(np.max(d["steps"])) for d in runs if np.size(d["steps"])] + [0])
    absent = {
        "early_zoom": ("The first training steps", f"No \"first {EARLY_ZOOM_STEPS} steps\" figure: every run ends by "
                       f"step {last}, so the trajectories above show them whole."),
        "coherence": ("Coherence of the answers", "No coherence figure: no run has a coherence score."),
        "lead_times": ("Lead time by onset method",
                       f"No lead-time figure: no onset method found both a {EARLY} and an {LATE} onset in any run "
                       f"(a lead needs both), so every bar would read \"n/a\"." if lead else
                       f"No lead-time figure: no run has both {EARLY} and {LATE} scores."),
        "loss_vs_score": ("Held-out loss against trait score",
                          "No loss figure: no run recorded a held-out loss (training writes it with each checkpoint)."),
    }
    for name, (title, why) in absent.items():
        if name not in figs:
            page.heading(3, title)
            page.text(why, "why")


def _diagnostics_data(runs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diagnostics per run name, :func:`diagnostics_tables`)."""
    diags = {}
    for d in runs:
        acts = read_h5(d["path"]) if d.get("activation_layers") and d.get("path") else None
        diags[run_name(d)] = run_diagnostics(d, acts)
    return diags, diagnostics_tables(runs, diags)


def _diagnostics(page: _Page, runs: Sequence[Mapping[str, Any]], diags: Mapping[str, Any], tables: Mapping[str, Any],
                 warns: Mapping[str, Sequence[str]], out_dir: Path, figures: bool,
                 summaries: Mapping[str, Mapping[str, Any]], method: str) -> dict[str, list[Path]]:
    """The diagnostics section onto ``page``; its figures."""
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
    legends = {
        "persona": ("onset_projection and onset_judge are training steps; lead_checkpoints = judge onset - "
                    "projection onset in checkpoints (positive: the activations moved first); “–”: no onset found "
                    "(by the report's onset method) or no lead without both."),
        "predictor": "questions: how many questions the fit had; alpha: the ridge penalty chosen for it.",
        "alarm": ("positive_checkpoints: checkpoints after step 0 where the judge's mean score is at least "
                  f"{ALARM_RISE:g} points above step 0, of all such checkpoints."),
    }
    has_acts = any(d.get("activation_layers") for d in runs)
    page.heading(2, "Diagnostics")
    page.text(DIAGNOSTICS_PARTS["intro"], "legend")
    for key, title in titles.items():
        df = tables[key]
        page.heading(3, title)
        page.text(DIAGNOSTICS_PARTS.get(key, ""), "legend")
        page.warnings(warns.get(key, []))
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
            page.text(why, "why")
        else:
            page.table(df)
            page.text(legends.get(key, ""), "legend")
    for name, ps in figs.items():
        for p in (p for p in ps if p.suffix == ".png"):
            t, cap = figure_caption(p.stem, method, summaries)
            page.figure(p, t, cap + (" " + DIAGNOSTICS_PARTS[name] if name in DIAGNOSTICS_PARTS else ""))
    return figs


def _early_warning(page: _Page, runs: Sequence[Mapping[str, Any]], method: str, params: Mapping[str, Any]) -> Any:
    """The early-warning section onto ``page``; its replay table."""
    rep, inter = early_warning_tables(runs, method, params)
    page.heading(2, "Early warning (online detector replayed)")
    page.text(WARNING_TEXT.format(early=EARLY, late=LATE), "legend")
    if rep.empty:
        page.text(f"no run has both {EARLY} and {LATE} scores", "why")
    else:
        n_in, n_lead = int(rep["in_time"].sum()), int(rep["lead_checkpoints"].notna().sum())
        normal = rep[rep["level"] == "normal"]
        page.table(rep)
        alarms = f"false alarms on normal-level runs: {int(normal['false_alarm'].sum())} of {len(normal)}."
        if n_lead:
            line = f"{EARLY} warned before {LATE}'s onset in {n_in} of {n_lead} runs where both were found; {alarms}"
        else:
            line = (f"No run has both a {EARLY} alert and an {LATE} onset, so no lead can be measured: a “–” in an "
                    f"*_alert_step column means the detector never fired, in an *_onset_step column that no onset was "
                    f"found on the whole run; {alarms}")
        page.text(line)
    if not inter.empty:
        page.heading(3, "Interventions by the live monitor")
        page.table(inter)
    return rep


def _write_csvs(runs: Sequence[Mapping[str, Any]], table: Any, out_dir: Path) -> tuple[Path, Path]:
    """``tidy.csv`` (one row per score) and ``headline.csv`` (the headline table); their paths."""
    csv = out_dir / "tidy.csv"
    with atomic.atomic_path(csv, suffix=".csv") as tmp:
        tidy_frame(runs).to_csv(tmp, index=False)
    table_csv = out_dir / "headline.csv"
    with atomic.atomic_path(table_csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return csv, table_csv


def build_report(
    root: str | Path, out_dir: str | Path, method: str = DEFAULT_METHOD,
    params: Mapping[str, Any] | None = None, figures: bool = True, n_boot: int = 1000,
) -> dict[str, Any]:
    """Report on every scores.h5 under ``root`` (an output root, its ``runs/`` dir or one run).

    The page explains itself: a banner when the runs used emt's built-in models, a table of
    contents, every column's unit, a line saying how many runs have an onset (and, when some have
    none, the method, its parameters and what "–" means), the runs' warnings beside the tables
    they affect (:func:`run_warnings`), and captions saying what to look at in each figure.
    Figures with nothing to show are left out with a sentence saying why.

    Args:
        root: where to look for ``scores.h5`` files (recursively).
        out_dir: where the report goes (created).
        method, params: onset method and its parameters for the table and the onset markers; the
            lead-time figure shows every method with its defaults.
        figures: False skips the figures (table, markdown, HTML and CSV only).
        n_boot: bootstrap replicates for the onset and lead intervals (0: none).

    Returns:
        ``{"md", "html", "csv", "table_csv", "figures": {name: [png, pdf]}, "table": DataFrame,
        "by_domain", "summaries": {run: run_summary}, "runs": [run names], "diagnostics",
        "early_warning", "warnings": {part: [lines]}}``. The table's ``peak_<trait>`` is the peak
        after step 0, with ``peak_<trait>_step`` and the base model's ``step0_<trait>``.

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
    table = with_peaks_after_base(headline_table(list(summaries.values())), runs)
    by_domain = domain_table(table, list(summaries.values()))
    lead = {run_name(d): lead_times_all_methods(d["steps"], d["traits"][EARLY]["score"], d["traits"][LATE]["score"])
            for d in runs if EARLY in d["traits"] and LATE in d["traits"]}
    figs = plot_all(runs, out_dir, summaries, method, lead=lead) if figures else {}
    csv, table_csv = _write_csvs(runs, table, out_dir)

    judges = sorted({j for d in runs for j in _judges(d)})
    methods_html = _methods_text(method, eff, judges, len(runs))

    diags, diag_tables = _diagnostics_data(runs)
    warns = run_warnings(runs, summaries, method, eff, diag_tables)

    page = _Page()
    banner = builtin_banner(runs)
    page.heading(2, "Headline table (per run)")
    page.table(table)
    page.text(onset_note(summaries, method, eff), "onset-note")
    page.warnings(warns["headline"])
    page.text(_headline_legend(runs), "legend")
    page.heading(2, "Per domain and level (mean over runs)")
    page.table(by_domain)
    page.text("Means over the runs (seeds) of each setting; “–”: no run of the setting has that onset or lead. "
              "lead_lo/_hi and p_early_first pool the seeds in a two-level bootstrap; the paired_* tests need at "
              "least 3 seeds.", "legend")
    _figures_section(page, runs, figs, method, summaries, lead, figures)
    warning = _early_warning(page, runs, method, params)
    figs.update(_diagnostics(page, runs, diags, diag_tables, warns, out_dir, figures, summaries, method))
    if figures:  # a figure not drawn this time must not linger from an earlier report in the same directory
        for stem in ("early_zoom", "coherence", "lead_times", "loss_vs_score", "persona", "overlap"):
            if stem not in figs:
                for ext in (".png", ".pdf"):
                    (out_dir / f"{stem}{ext}").unlink(missing_ok=True)
    page.heading(2, "Methods")
    page.raw(re.sub(r"</?b>", "**", html.unescape(methods_html)), f"<p>{methods_html}</p>")
    page.heading(2, "Provenance")
    page.table(provenance_table(runs))

    n_warn = sum(len(v) for v in warns.values())
    title = f"Emergent misalignment report ({len(runs)} run{'s' if len(runs) != 1 else ''})"
    intro = (f"{len(runs)} run(s), onset method {method}. "
             + (f"{n_warn} warning(s) from the runs are shown beside the tables they affect (yellow boxes)."
                if n_warn else "The runs raised no warnings."))
    md = [f"# {title}", ""] + ([f"> **{banner}**", ""] if banner else []) + [intro, ""] + page.toc_md() + page.md
    md_path = atomic.write_text(out_dir / "report.md", "\n".join(md))
    page_html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                 "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                 f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
                 f"<h1>{html.escape(title)}</h1>"
                 + (f"<div class='banner'><b>{html.escape(banner)}</b></div>" if banner else "")
                 + f"<p>{html.escape(intro)}</p>" + page.toc_html() + "".join(page.html) + "</body></html>")
    html_path = atomic.write_text(out_dir / "report.html", page_html)
    return {"md": md_path, "html": html_path, "csv": csv, "table_csv": table_csv, "figures": figs,
            "table": table, "by_domain": by_domain, "summaries": summaries, "runs": [run_name(d) for d in runs],
            "diagnostics": diag_tables, "early_warning": warning, "warnings": warns}
