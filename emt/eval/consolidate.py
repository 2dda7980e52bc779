"""Consolidation: a run's per-checkpoint result files (and activations) into its ``scores.h5``.

One consolidation job runs after a run's whole eval array (and the monitor consolidates the
results present so far after each round). The file itself is written by
:func:`emt.store.scores.consolidate`; this module gathers what goes into it: the result files of
every target, the activation files and persona vectors when activations were captured, the
losses recorded with the checkpoints, provenance, the run's identity and a monitor's intervention.
With ``training.report_to`` set, every consolidation then logs each checkpoint's scores, coherence,
NaN share and judge cost to those trackers at its training step (:func:`log_to_trackers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emt.core import paths
from emt.core.config import to_yaml
from emt.core.logs import setup_logging
from emt.core.provenance import collect
from emt.eval.judge import JudgeCache, estimate_cost
from emt.eval.persona import load as load_persona, skipped_reasons
from emt.eval.plan import eval_root, load_traits, targets
from emt.store import results as results_file
from emt.store import tracker
from emt.store.results import ConsolidationError
from emt.store.scores import consolidate
from emt.store.scores import load as load_scores

if TYPE_CHECKING:
    from emt.sweep.runs import Run

log = logging.getLogger(__name__)


def consolidate_run(run: "Run", ehash: str, steps: Sequence[int] | None = None) -> dict[str, Any]:
    """Write the run's scores.h5 from every target's result (fails, touching nothing, if any is missing).

    ``steps``: consolidate only these (the monitor's view while training runs); the file then
    carries ``partial=True`` and the full consolidation replaces it later. With activations
    captured, their files and the persona vectors go in too (``persona_skipped``: why a trait has
    none, as recorded by :func:`emt.eval.persona.record_skipped`); a training run stopped by the
    monitor records its intervention (``intervention_step``, ``intervention_action``, ...). The
    run's identity (``run``, ``domain``, ``level``, ``variant``, ``seed``) goes into the attributes.
    """
    setup_logging()
    root = eval_root(run, ehash)
    partial = steps is not None
    steps = sorted(steps) if steps is not None else targets(run)
    results = result_files(run, root, steps)
    acts, personas = activation_inputs(run, root, steps)
    intervention = intervention_attrs(run)
    if up_to_date(paths.scores_file(run.path), ehash, steps, results, partial, intervention):
        log.info("%s: scores.h5 is up to date", run.name)
        return {"run": run.name, "scores": str(paths.scores_file(run.path)), "checkpoints": len(steps), "skipped": True,
                "trackers": log_to_trackers(run, results)}  # a tracker added since (or that failed) catches up
    attrs = scores_attrs(run, ehash, partial, intervention)
    # What "up to date" compares later: the content, so a copied or restored output root (new file
    # times) is still current, and a result rewritten since is stale whatever its time says.
    attrs["results_digest"] = results_digest(results)
    if acts is not None:  # why a trait has no persona vector, for the report (absent: every vector built)
        skipped = skipped_reasons(root, [t.name for t in load_traits(run.config)])
        if skipped:
            attrs["persona_skipped"] = skipped
    out = consolidate(results, paths.scores_file(run.path), attrs, checkpoint_losses(run), acts, personas)
    log.info("%s: consolidated %d checkpoints into %s%s", run.name, len(steps), out, " (partial)" if partial else "")
    return {"run": run.name, "scores": str(out), "checkpoints": len(steps), "partial": partial,
            "trackers": log_to_trackers(run, results)}


def log_to_trackers(run: "Run", results: Sequence[Path]) -> list[str]:
    """Send scores.h5's per-checkpoint scalars and the judge cost of each checkpoint to the
    trackers of ``training.report_to`` (:mod:`emt.store.tracker`); the trackers written.

    A tracker that fails (not installed, unreachable) is logged as an error and never fails the
    consolidation: scores.h5 is the record, the trackers a view of it, and the next
    consolidation (or the monitor's next round) sends everything again."""
    report_to = run.config.training.report_to
    if not report_to:
        return []
    try:
        scalars = tracker.checkpoint_scalars(load_scores(paths.scores_file(run.path), strings=False))
        tracker.add_judge_costs(scalars, judge_costs(run, results))
        written = tracker.log_eval(run.path, run.path.name, report_to, scalars)  # the trainer's run_name
    except Exception as exc:  # noqa: BLE001 (a tracker's failure of any kind must not fail consolidation)
        log.error("%s: could not log to %s: %s; scores.h5 is written, the next consolidation tries again",
                  run.name, ", ".join(report_to), exc)
        return []
    if written:
        log.info("%s: logged %d checkpoints to %s", run.name, len(scalars), ", ".join(written))
    return written


def judge_costs(run: "Run", results: Sequence[Path]) -> dict[int, dict[str, float]]:
    """step -> {judge label: estimated USD} of judging that checkpoint's answers (trait and coherence).

    Tokens come from the judge cache (``judge.cache``: every judgement's prompt and completion
    tokens as the judge reported them), priced by :func:`emt.eval.judge.estimate_cost` (with
    ``judge.prices`` over its table; at the Batch API's price for the judges the result lists under
    ``batch_judges``): what judging the checkpoint costs, whether this evaluation
    paid it or a cache hit did. Judges without a price (local models, unknown names) and runs
    without a cache get no cost."""
    cfg = run.config
    prices = cfg.judge.prices
    priced = [(j.label, j.model) for j in cfg.judge.judges if estimate_cost(j.model, 0, 0, prices) is not None]
    cache_file = paths.judge_cache_file(cfg.cluster.output_root)
    if not priced or not cfg.judge.cache or not cache_file.is_file():
        return {}
    traits = {t.name: t for t in load_traits(cfg)}
    cache = JudgeCache(cache_file)
    out: dict[int, dict[str, float]] = {}
    try:
        for f in results:
            res = results_file.read(f)
            prompts = []
            for name, tr in res["traits"].items():
                t = traits.get(name)
                questions = {q.id: q for q in t.questions} if t is not None else {}
                for qid, answers in zip(tr["question_ids"], tr["responses"]):
                    if t is not None and qid in questions:
                        q = questions[qid]
                        prompts += [p for a in answers for p in (t.judge_prompt_for(q, a), t.coherence_prompt_for(q, a))]
            batch = set(res.get("batch_judges") or ())  # judged through the Batch API: its price
            for label, model in priced:
                hits = cache.get_many(model, prompts)
                usd = estimate_cost(model, sum(r.prompt_tokens for r in hits.values()),
                                    sum(r.completion_tokens for r in hits.values()), prices, batch=label in batch)
                if hits and usd is not None:
                    out.setdefault(int(res["step"]), {})[label] = usd
    finally:
        cache.close()
    return out


def result_files(run: "Run", root: Path, steps: Sequence[int]) -> list[Path]:
    """The result file of every step; ConsolidationError naming the steps not scored yet."""
    missing = [s for s in steps if not paths.result_file(root, s).is_file()]
    if missing:
        raise ConsolidationError(f"{root}: {len(missing)} checkpoint(s) not scored yet (steps {missing[:10]}"
                                 f"{'...' if len(missing) > 10 else ''}); rerun launch/eval_array.py --run {run.name}")
    return [paths.result_file(root, s) for s in steps]


def activation_inputs(run: "Run", root: Path, steps: Sequence[int],
                      ) -> tuple[list[Path] | None, dict[str, dict[str, Any]] | None]:
    """(activation file of every step, persona vectors by trait) when activations are captured,
    else (None, None); ConsolidationError when a scored step has no activation file."""
    if not run.config.activations.layers:
        return None, None
    acts = [paths.activation_file(root, s) for s in steps]
    lost = [s for s, f in zip(steps, acts) if not f.is_file()]
    if lost:
        raise ConsolidationError(f"{root}: activations.layers is set but steps {lost[:10]} have a result and no "
                                 f"activation file; delete their result files (step-N.json) and rerun "
                                 f"launch/eval_array.py --run {run.name}")
    personas = {}
    for t in load_traits(run.config):
        f = paths.persona_file(root, t.name)
        if f.is_file():
            personas[t.name] = load_persona(f)
    return acts, personas


def checkpoint_losses(run: "Run") -> dict[int, tuple[float | None, float | None]]:
    """step -> (train loss, held-out loss) as recorded by training (step 0: held-out loss only)."""
    losses: dict[int, tuple[float | None, float | None]] = {}
    s0 = paths.step0_file(run.path)
    if s0.is_file():
        losses[0] = (None, json.loads(s0.read_text()).get("heldout_loss"))
    for s, ckpt in paths.complete_checkpoints(run.path):
        m = json.loads(paths.checkpoint_marker(ckpt).read_text())
        losses[s] = (m.get("train_loss"), m.get("heldout_loss"))
    return losses


def scores_attrs(run: "Run", ehash: str, partial: bool, intervention: dict[str, Any]) -> dict[str, Any]:
    """scores.h5's attributes: config and hashes, the run's identity, provenance, the intervention."""
    prov = collect(run.hash)
    return {"config": to_yaml(run.config), "config_hash": run.hash, "eval_hash": ehash, **run.labels(),
            "git_commit": prov["git"]["commit"] or "", "git_dirty": bool(prov["git"]["dirty"]),
            "model": run.config.model.name, "packages": prov["packages"], "partial": partial, **intervention}


def intervention_attrs(run: "Run") -> dict[str, Any]:
    """scores.h5 attributes of a monitor's intervention on this run ({} when there was none)."""
    f = paths.intervention_file(run.path)
    if not f.is_file():
        return {}
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable, intervention not recorded in scores.h5", f)
        return {}
    out: dict[str, Any] = {"intervention_step": int(rec["stopped_at_step"]),
                           "intervention_action": str(rec.get("action") or "stop")}
    for k in ("trait", "onset_step", "detected_step", "rollback_step"):
        if rec.get(k) is not None:
            out[f"intervention_{k}"] = rec[k]
    return out


def scores_up_to_date(run: "Run", ehash: str) -> bool:
    """True when the run's scores.h5 holds exactly its current results."""
    steps = targets(run)
    results = [paths.result_file(eval_root(run, ehash), s) for s in steps]
    return all(p.is_file() for p in results) and up_to_date(paths.scores_file(run.path), ehash, steps, results,
                                                            False, intervention_attrs(run))


def results_digest(results: Sequence[Path]) -> str:
    """SHA-256 over the result files' names and bytes, in the given (step) order.

    Recorded in scores.h5 (``results_digest``) by :func:`consolidate_run` and compared by
    :func:`up_to_date`: staleness by content, so copying an output root (which resets file times)
    does not make its scores.h5 read "stale". Activation files are not hashed: they are written
    with their result file and are large."""
    h = hashlib.sha256()
    for p in results:
        name = p.name.encode()
        h.update(len(name).to_bytes(8, "little") + name + p.stat().st_size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def up_to_date(scores: Path, ehash: str, steps: Sequence[int], results: Sequence[Path], partial: bool = False,
               intervention: dict[str, Any] | None = None) -> bool:
    """True when scores.h5 already holds exactly these results (a rerun rewrites nothing).

    The results are compared by content (``results_digest``); a scores.h5 written before the
    digest was recorded falls back to file times (newer than every result file)."""
    if not scores.is_file():
        return False
    import h5py  # heavy: only when a scores.h5 exists

    try:
        with h5py.File(scores, "r") as h5:
            same = (h5.attrs.get("eval_hash") == ehash and h5["steps"][()].tolist() == list(steps)
                    and bool(h5.attrs.get("partial", False)) == partial
                    and h5.attrs.get("intervention_step", None) == (intervention or {}).get("intervention_step"))
            digest = h5.attrs.get("results_digest")
    except (OSError, KeyError):
        return False
    if not same:
        return False
    if digest is not None:
        return (digest.decode() if isinstance(digest, bytes) else str(digest)) == results_digest(results)
    return scores.stat().st_mtime >= max(p.stat().st_mtime for p in results)
