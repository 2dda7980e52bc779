"""Figures of scored runs: trajectories with onsets, the early zoom, coherence, lead times, loss.

Every function takes run dicts as returned by :func:`emt.store.scores.load` (``attrs["run"]`` names the
run; :func:`emt.report.report.load_runs` fills it in from the run directory when absent), writes
each figure as PNG *and* PDF into ``out_dir`` (atomically, via :mod:`emt.core.atomic`) and returns the
written paths. matplotlib is imported inside the functions with the Agg backend, so importing this
module costs nothing and works on headless cluster nodes.

Readability choices: the Okabe-Ito palette (colour-blind safe; levels normal/mild/strong keep
the same colour in every figure), line styles that carry meaning without colour (hallucination
dashed, evil solid), labelled axes with units, and a "no scores" note instead of an empty or
crashing panel when a trait has no finite score (e.g. a judge that never answered with a number).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emt.core import atomic
from emt.analysis.metrics import lead_times_all_methods, nanmean_rows
from emt.analysis.onset import DEFAULT_METHOD
from emt.analysis.summary import EARLY, LATE, run_identity, run_summary

# Okabe-Ito: distinguishable under the common colour-vision deficiencies and in greyscale print.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LEVEL_COLORS = {"normal": "#0072B2", "mild": "#E69F00", "strong": "#D55E00"}
LEVEL_ORDER = ("normal", "mild", "strong")
TRAIT_STYLES = {EARLY: "--", LATE: "-"}  # the early trait dashed, the late one solid, in every figure
SCORE_LABEL = "score (0-100)"
EARLY_ZOOM_STEPS = 100  # the early-zoom figure: drawn only when some run is longer than this
STEP_LABEL = "training step"

Run = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# helpers


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def run_name(d: Run) -> str:
    """The run's name from its attributes ("" when unknown)."""
    return str(d.get("attrs", {}).get("run", "") or "")


def _level_color(level: str | None, i: int = 0) -> str:
    return LEVEL_COLORS.get(level or "", OKABE_ITO[(i + 4) % len(OKABE_ITO)])


def _trait_color(traits: Sequence[str], t: str) -> str:
    fixed = {LATE: OKABE_ITO[3], EARLY: OKABE_ITO[0]}
    if t in fixed:
        return fixed[t]
    others = [x for x in traits if x not in fixed]
    return OKABE_ITO[[2, 4, 1, 5, 7][others.index(t) % 5]]


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as PNG (150 dpi: sharp on screen) and PDF (vector: for print); close it."""
    out_dir = Path(out_dir)
    paths = []
    for ext in ("png", "pdf"):
        dest = out_dir / f"{stem}.{ext}"
        with atomic.atomic_path(dest, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(dest)
    _plt().close(fig)
    return paths


def _no_scores(ax: Any, what: str = "no scores") -> None:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4",
            bbox={"boxstyle": "round", "fc": "0.95", "ec": "0.7"})


def _question_ci(samples: Any, level_z: float = 1.96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) per checkpoint: a normal CI over question means.

    Questions are the sampling unit (samples of one question are correlated), so the interval is
    mean +- z * sd(question means) / sqrt(#questions with a score). It needs no resampling, so
    it is instant for 281 checkpoints; NaN where fewer than 2 questions have a score.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 3 or x.size == 0:
        n = x.shape[0] if x.ndim else 0
        nan = np.full(n, np.nan)
        return nan, nan, nan
    n, q, s = x.shape
    qm = nanmean_rows(x.reshape(n * q, s)).reshape(n, q)  # per-question means
    m = np.isfinite(qm)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m, qm, 0.0).sum(axis=1) / cnt
        var = np.where(m, (qm - mean[:, None]) ** 2, 0.0).sum(axis=1) / (cnt - 1)
        half = level_z * np.sqrt(var / cnt)
    half = np.where(cnt >= 2, half, np.nan)
    return mean, mean - half, mean + half


def _summary_for(d: Run, summaries: Mapping[str, Mapping[str, Any]] | None, method: str) -> Mapping[str, Any]:
    name = run_name(d)
    if summaries is not None and name in summaries:
        return summaries[name]
    return run_summary(d, method=method, run=name)


def _traits_of(runs: Sequence[Run]) -> list[str]:
    """All traits, early and late first (they are the story), then the rest sorted."""
    seen = {t for d in runs for t in d.get("traits", {})}
    return [t for t in (EARLY, LATE) if t in seen] + sorted(seen - {EARLY, LATE})


def _sort_key(d: Run) -> tuple[Any, ...]:
    p = run_identity(d, run_name(d))
    lvl = LEVEL_ORDER.index(p["level"]) if p["level"] in LEVEL_ORDER else len(LEVEL_ORDER)
    return (p["domain"] or "", lvl, p["level"] or "", p["seed"] or 0, run_name(d))


def _grid(n: int, ncols: int = 3, w: float = 4.6, h: float = 3.4, sharey: bool = True) -> tuple[Any, np.ndarray]:
    plt = _plt()
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.6), sharey=sharey, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _finite(y: Any) -> bool:
    return bool(np.any(np.isfinite(np.asarray(y, dtype=np.float64))))


def _safe_stem(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s) or "run"


# ---------------------------------------------------------------------------------------------
# figures


def _intervention(d: Run) -> tuple[float, str] | None:
    """(step, label) of the live monitor's intervention recorded in a run's scores.h5, or None."""
    a = d.get("attrs", {}) or {}
    step = a.get("intervention_step")
    if step is None:
        return None
    action, trait = a.get("intervention_action") or "stop", a.get("intervention_trait")
    return float(step), f"{action}" + (f" ({trait} alert)" if trait else "")


def _draw_intervention(ax: Any, d: Run, color: str) -> None:
    """A dotted vertical line at the step where the monitor stopped training, labelled at the top."""
    iv = _intervention(d)
    if iv is None:
        return
    step, label = iv
    ax.axvline(step, color=color, ls=":", lw=2.0, zorder=4)
    ax.annotate(label, xy=(step, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -3), textcoords="offset points",
                ha="right", va="top", fontsize=7, color=color, rotation=90)


def plot_domain_trajectories(
    runs: Sequence[Run], out_dir: Path, summaries: Mapping[str, Mapping[str, Any]] | None = None,
    method: str = DEFAULT_METHOD, ci: bool = True,
) -> list[Path]:
    """One figure per domain (``trajectories_<domain>.png/.pdf``): a panel per trait, a line per
    level (several seeds of a level share its colour), the 95% CI over questions as a band, and the
    onset (``summaries[run]["traits"][t]["onset_step"]``, else computed with ``method``) as a
    dashed vertical line with a dot on the curve, and its bootstrap interval (``onset_lo``/
    ``onset_hi`` of the summary, when computed) as a shaded span and error bar."""
    plt = _plt()
    by_domain: dict[str, list[Run]] = {}
    for d in sorted(runs, key=_sort_key):
        by_domain.setdefault(run_identity(d, run_name(d))["domain"] or run_name(d) or "run", []).append(d)
    out: list[Path] = []
    for domain, drs in by_domain.items():
        traits = _traits_of(drs)
        any_onset = False
        fig, axes = _grid(len(traits), ncols=min(3, len(traits)), w=5.0, h=3.8)
        for ax, t in zip(axes, traits):
            any_data = False
            for i, d in enumerate(drs):
                tr = d["traits"].get(t)
                if tr is None:
                    continue
                p = run_identity(d, run_name(d))
                steps = np.asarray(d["steps"])
                y = np.asarray(tr["score"], dtype=np.float64)
                if not _finite(y):
                    continue
                any_data = True
                col = _level_color(p["level"], i)
                label = p["level"] or run_name(d)
                if p["seed"] is not None:
                    label += f" s{p['seed']}"
                ax.plot(steps, y, color=col, lw=1.4, label=label)
                if ci:
                    _, lo, hi = _question_ci(tr.get("samples"))
                    if lo.shape == y.shape and _finite(lo):
                        ax.fill_between(steps, lo, hi, color=col, alpha=0.2, lw=0)
                ts = _summary_for(d, summaries, method)["traits"].get(t, {})
                o = ts.get("onset_step")
                if o is not None:
                    any_onset = True
                    j = int(np.searchsorted(steps, o))
                    ax.axvline(o, color=col, ls="--", lw=1.0)
                    lo_, hi_ = ts.get("onset_lo"), ts.get("onset_hi")
                    if lo_ is not None and hi_ is not None:  # the onset's bootstrap interval, along the step axis
                        ax.axvspan(lo_, hi_, color=col, alpha=0.12, lw=0)
                    if j < y.size and np.isfinite(y[j]):
                        ax.errorbar([o], [y[j]], xerr=None if lo_ is None or hi_ is None else
                                    [[max(o - lo_, 0.0)], [max(hi_ - o, 0.0)]], fmt="o", color=col, ms=6, mec="white",
                                    mew=0.8, capsize=3, zorder=5)
                _draw_intervention(ax, d, col)
            if not any_data:
                # keep the step axis of the other panels so the empty panel does not read as 0-1
                ax.set_xlim(0, max([float(np.max(d["steps"])) for d in drs if np.size(d["steps"])] + [1.0]))
                ax.set_ylim(0, 100)  # the score scale, not matplotlib's default 0-1
                _no_scores(ax, "no scores\n(no judge reply gave a number)")
            ax.set_title(t)
            ax.set_xlabel(STEP_LABEL)
            ax.set_ylabel(SCORE_LABEL)
            ax.grid(alpha=0.3)
            if any_data:
                ax.legend(title="level", fontsize=8, title_fontsize=8, loc="upper left", framealpha=0.85)
        stops = "; dotted: the monitor stopped training" if any(_intervention(d) for d in drs) else ""
        onsets = (f"dashed line + dot: onset, {method}, with its 95% bootstrap interval shaded" if any_onset
                  else f"no onset found by {method}")  # never describe markers that are not drawn
        fig.suptitle(f"{domain}: trait scores by fine-tuning level (band: 95% CI over questions; {onsets}{stops})",
                     fontsize=11)
        fig.tight_layout()
        out += _save(fig, out_dir, f"trajectories_{_safe_stem(domain)}")
    return out


def plot_early_zoom(runs: Sequence[Run], out_dir: Path, max_step: int = EARLY_ZOOM_STEPS) -> list[Path]:
    """``early_zoom.png/.pdf``: the first ``max_step`` training steps of every run, one panel per run,
    hallucination dashed and evil solid (other traits dotted)."""
    runs = sorted(runs, key=_sort_key)
    fig, axes = _grid(len(runs), ncols=3, w=4.4, h=3.2)
    traits = _traits_of(runs)
    for ax, d in zip(axes, runs):
        steps = np.asarray(d["steps"])
        keep = steps <= max_step
        drawn = False
        for t in traits:
            tr = d["traits"].get(t)
            if tr is None:
                continue
            y = np.asarray(tr["score"], dtype=np.float64)[keep]
            if not _finite(y):
                continue
            drawn = True
            ax.plot(steps[keep], y, TRAIT_STYLES.get(t, ":"), color=_trait_color(traits, t), lw=1.6, label=t)
        if not drawn:
            _no_scores(ax)
        else:
            iv = _intervention(d)
            if iv is not None and iv[0] <= max_step:
                _draw_intervention(ax, d, "black")
            ax.legend(fontsize=8, loc="upper left", framealpha=0.85)
        ax.set_title(run_name(d) or "run", fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(SCORE_LABEL)
        # a short run ends before max_step: do not leave an empty stretch that reads as missing data
        ax.set_xlim(0, min(max_step, float(steps.max())) if steps.size else max_step)
        ax.grid(alpha=0.3)
    fig.suptitle(f"First {max_step} training steps (hallucination dashed, evil solid)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "early_zoom")


def plot_coherence(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """``coherence.png/.pdf``: mean coherence (0-100) of the answers on each trait's prompt set,
    one panel per run; coherence is judged per prompt set, so a drop on one set only shows here.
    [] (no figure) when no run has a coherence score."""
    runs = sorted(runs, key=_sort_key)
    traits = _traits_of(runs)
    if not any(tr.get("coherence") is not None and _finite(tr["coherence"]) for d in runs for tr in d["traits"].values()):
        return []
    fig, axes = _grid(len(runs), ncols=3, w=4.4, h=3.2)
    for ax, d in zip(axes, runs):
        steps = np.asarray(d["steps"])
        drawn = False
        for t in traits:
            tr = d["traits"].get(t)
            if tr is None or tr.get("coherence") is None:
                continue
            c = np.asarray(tr["coherence"], dtype=np.float64)
            c = nanmean_rows(c.reshape(c.shape[0], -1)) if c.ndim > 1 else c
            if not _finite(c):
                continue
            drawn = True
            ax.plot(steps, c, TRAIT_STYLES.get(t, ":"), color=_trait_color(traits, t), lw=1.4, label=f"{t} prompts")
        if not drawn:
            _no_scores(ax, "no coherence scores")
        else:
            ax.legend(fontsize=8, loc="lower left", framealpha=0.85)
        ax.set_title(run_name(d) or "run", fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel("coherence (0-100)")
        ax.grid(alpha=0.3)
    fig.suptitle("Coherence of the answers on each prompt set", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "coherence")


def plot_lead_times(
    runs: Sequence[Run], out_dir: Path, params: Mapping[str, Mapping[str, Any]] | None = None,
    early: str = EARLY, late: str = LATE, tol: float = 2.0, lead: Mapping[str, Any] | None = None,
) -> list[Path]:
    """``lead_times.png/.pdf``: the lead time (checkpoints, ``early`` -> ``late``; positive = early
    leads) of every run under every onset method, grouped per run, with the methods' agreement
    (how many lie within +-``tol`` checkpoints of their median) written above each group. A method
    without an onset gets an "n/a" mark instead of a bar. ``lead`` maps a run name to a
    precomputed :func:`lead_times_all_methods` result.

    Runs where no method finds both onsets are left out, and with none left no figure is drawn
    ([] is returned): a figure of nothing but "n/a" marks says less than the sentence the report
    writes instead."""
    plt = _plt()
    runs = [d for d in sorted(runs, key=_sort_key) if early in d["traits"] and late in d["traits"]]
    results = [lead[run_name(d)] if lead and run_name(d) in lead else
               lead_times_all_methods(d["steps"], d["traits"][early]["score"], d["traits"][late]["score"],
                                      params=params, tol=tol) for d in runs]
    keep = [i for i, r in enumerate(results) if any(m["checkpoints"] is not None for m in r["methods"].values())]
    runs, results = [runs[i] for i in keep], [results[i] for i in keep]
    if not runs:
        return []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(runs) + 2.5), 4.4))
    methods = list(results[0]["methods"])
    width = 0.8 / len(methods)
    x = np.arange(len(runs))
    for k, m in enumerate(methods):
        vals = np.array([np.nan if r["methods"][m]["checkpoints"] is None else r["methods"][m]["checkpoints"]
                         for r in results], dtype=np.float64)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, np.nan_to_num(vals), width * 0.92, color=OKABE_ITO[k % len(OKABE_ITO)], label=m,
               edgecolor="black", lw=0.4)
        for px, v in zip(pos, vals):
            if not np.isfinite(v):
                ax.text(px, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.3")
    ymax = max([abs(r["methods"][m]["checkpoints"] or 0) for r in results for m in methods] + [1.0])
    for xi, r in zip(x, results):
        a = r["agreement"]
        note = (f"{a['n_agree']}/{a['n_methods']} agree\nmedian {a['median']:.1f}" if a["median"] is not None
                else "no method\nfinds both onsets")
        ax.text(xi, ymax * 1.08, note, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), ymax * 1.45)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [run_name(d) or "run" for d in runs], rotation=20 if len(runs) > 4 else 0, ha="right" if len(runs) > 4 else "center")
    ax.set_ylabel(f"lead time (checkpoints)\n{early} before {late}")
    ax.set_title(f"Lead time of {early} over {late} by onset method (agreement: within ±{tol:g} checkpoints of the median)",
                 fontsize=10)
    ax.legend(title="onset method", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "lead_times")


def plot_loss_vs_score(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """``loss_vs_score.png/.pdf``: held-out loss (x) against trait score (y), one panel per run, points
    coloured by training step (shared colour scale), one marker per trait. [] (no figure) when no
    run recorded a held-out loss."""
    plt = _plt()
    runs = sorted(runs, key=_sort_key)
    if not any(_finite(d.get("loss", {}).get("heldout", [])) for d in runs):
        return []
    traits = _traits_of(runs)
    markers = {EARLY: "^", LATE: "o"}
    extra = iter(["s", "D", "v", "P", "X"])
    for t in traits:
        markers.setdefault(t, next(extra, "s"))
    fig, axes = _grid(len(runs), ncols=3, w=4.4, h=3.4)
    vmax = max([float(np.max(d["steps"])) for d in runs if np.size(d["steps"])] + [1.0])
    sc = None
    for ax, d in zip(axes, runs):
        steps = np.asarray(d["steps"])
        loss = np.asarray(d.get("loss", {}).get("heldout", np.full(steps.size, np.nan)), dtype=np.float64)
        drawn = False
        for t in traits:
            tr = d["traits"].get(t)
            if tr is None:
                continue
            y = np.asarray(tr["score"], dtype=np.float64)
            ok = np.isfinite(y) & np.isfinite(loss)
            if not ok.any():
                continue
            drawn = True
            sc = ax.scatter(loss[ok], y[ok], c=steps[ok], cmap="viridis", vmin=0, vmax=vmax, s=14,
                            marker=markers[t], label=t, edgecolors="none")
        if not drawn:
            _no_scores(ax, "no scores / no held-out loss")
        else:
            leg = ax.legend(fontsize=8, loc="best", framealpha=0.85)
            for h in leg.legend_handles:  # marker shape only: the colour encodes the step
                h.set_color("0.3")
        ax.set_title(run_name(d) or "run", fontsize=10)
        ax.set_xlabel("held-out loss (nats/token)")
        ax.set_ylabel(SCORE_LABEL)
        ax.grid(alpha=0.3)
    fig.suptitle("Held-out loss vs trait score (colour: training step)", fontsize=11)
    fig.tight_layout()
    if sc is not None:
        fig.colorbar(sc, ax=[a for a in axes if a.get_visible()], label=STEP_LABEL, shrink=0.8, pad=0.02)
    return _save(fig, out_dir, "loss_vs_score")


def plot_persona(runs: Sequence[Run], diags: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """``persona.png/.pdf``: per run with persona vectors, each trait's judge score (left axis, as in
    the trajectories) beside the projection of the answers on its persona vector (right axis,
    dotted, one line per layer): the judge-free signal against the judged one. [] when no run has
    persona vectors."""
    runs = [d for d in sorted(runs, key=_sort_key) if diags.get(run_name(d), {}).get("persona")]
    if not runs:
        return []
    traits = _traits_of(runs)
    fig, axes = _grid(len(runs), ncols=3, w=4.8, h=3.4, sharey=False)
    for ax, d in zip(axes, runs):
        steps = np.asarray(d["steps"])
        pers = diags[run_name(d)]["persona"]
        ax2 = ax.twinx()
        for t in traits:
            tr = d["traits"].get(t)
            if tr is None or t not in pers:
                continue
            col = _trait_color(traits, t)
            ax.plot(steps, tr["score"], TRAIT_STYLES.get(t, "-"), color=col, lw=1.4, label=f"{t} (judge)")
            mean = np.asarray(pers[t].get("mean", np.empty((0, 0))), dtype=np.float64)
            layers = list(pers[t].get("layers", range(mean.shape[1] if mean.ndim == 2 else 0)))
            for li in range(mean.shape[1] if mean.ndim == 2 else 0):
                ax2.plot(steps, mean[:, li], ":", color=col, lw=1.2, alpha=0.55 + 0.45 * (li + 1) / mean.shape[1],
                         label=f"{t} projection, layer {layers[li] if li < len(layers) else li}")
        ax.set_title(run_name(d) or "run", fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(SCORE_LABEL)
        ax2.set_ylabel("projection on persona vector", fontsize=9)
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        # below the axes: inside, the legend would hide the curves it explains
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  frameon=False)
    fig.suptitle("Judge score (solid/dashed) and persona-vector projection (dotted)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "persona")


def plot_overlap(runs: Sequence[Run], diags: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """``overlap.png/.pdf``: per run, the overlap (mean cos^2 of principal angles, 0-1) of the top-k
    activation-shift subspaces on training vs evaluation prompts at each checkpoint, one line per
    layer. [] when no run captured activations."""
    runs = [d for d in sorted(runs, key=_sort_key) if diags.get(run_name(d), {}).get("overlap")]
    if not runs:
        return []
    fig, axes = _grid(len(runs), ncols=3, w=4.4, h=3.2)
    for ax, d in zip(axes, runs):
        steps = np.asarray(d["steps"])
        dg = diags[run_name(d)]
        for i, (layer, series) in enumerate(dg["overlap"].items()):
            ax.plot(steps, series, color=OKABE_ITO[i % len(OKABE_ITO)], lw=1.4, marker="o", ms=2.5,
                    label=f"layer {layer}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{run_name(d) or 'run'} (k={dg.get('overlap_k', '?')})", fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel("subspace overlap (0-1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle("Overlap of activation shifts: training vs evaluation prompts", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "overlap")


def plot_all(
    runs: Sequence[Run], out_dir: Path, summaries: Mapping[str, Mapping[str, Any]] | None = None,
    method: str = DEFAULT_METHOD, lead: Mapping[str, Any] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, list[Path]]:
    """Every figure above that has something to show; returns ``{figure name: [png, pdf, ...]}``.

    The early zoom is drawn only when some run goes past ``EARLY_ZOOM_STEPS`` (otherwise it would
    repeat the trajectories), the lead-time figure only when some run has a lead under some method,
    the coherence and loss figures only when some run has coherence scores or a held-out loss."""
    last = max([float(np.max(d["steps"])) for d in runs if np.size(d["steps"])] + [0.0])
    out = {
        "trajectories": plot_domain_trajectories(runs, out_dir, summaries, method),
        "early_zoom": plot_early_zoom(runs, out_dir) if last > EARLY_ZOOM_STEPS else [],
        "coherence": plot_coherence(runs, out_dir),
        "lead_times": plot_lead_times(runs, out_dir, params=params, lead=lead),
        "loss_vs_score": plot_loss_vs_score(runs, out_dir),
    }
    return {k: v for k, v in out.items() if v}
