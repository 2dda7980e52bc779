"""The per-checkpoint result file (``eval/<hash>/step-N.json``): its one home.

An eval task writes one result file per checkpoint, atomically, once every judge has scored its
answers; consolidation reads every result into scores.h5 (:mod:`emt.store.scores`), the monitor
and ``launch/status.py`` read a result's mean trait scores, and a rerun reads the answers back
out of a result that was set aside because judgements were lost (``judge_failed``).

Layout (JSON)::

    {"step": int, "judges": [judge name, ...],
     "judge_failed": {judge: {"count": int, "reasons": {reason: int}}},   # only when incomplete
     "traits": {trait: {"question_ids": [q], "questions": [q], "responses": [q][s],
                        "scores" | "coherence": {judge: [q][s] float (NaN = no score)},
                        "raw" | "reason" | "coherence_raw" | "coherence_reason": {judge: [q][s] str}}},
     "batch_judges": [judge name, ...],   # only when some judged through the Batch API (half price)
     "run", "run_hash", "eval_hash", "seconds", "gen_seconds", "judge_seconds"}

``raw`` and ``reason`` keep the judge's reply wherever a score is NaN (never a silent 0) and are
"" elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from emt.core import atomic

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("step", "traits", "judges")


class ConsolidationError(RuntimeError):
    """A result file is missing, unreadable or inconsistent; names the file."""


def nan_if_none(x: float | None) -> float:
    """A judgement's score as a float, NaN when there is none."""
    return math.nan if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def count_failures(judgements: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """``judge_failed`` of a result: per judge, how many judgements were lost in transport after
    every retry and why ({} when none was)."""
    failed: dict[str, dict[str, Any]] = {}
    for name, js in judgements.items():
        for x in js:
            if getattr(x, "failed", False):
                f = failed.setdefault(name, {"count": 0, "reasons": {}})
                f["count"] += 1
                f["reasons"][x.reason or "?"] = f["reasons"].get(x.reason or "?", 0) + 1
    return failed


def _trait_entry(trait: Any, answers: list[list[str]], n: int, lo: int,
                 per_judge: Mapping[str, tuple[Sequence[Any], Sequence[Any]]]) -> dict[str, Any]:
    """One trait's part of a result: its questions, answers and each judge's [question][sample] grids,
    the trait's judgements starting at flat index ``lo`` of every judge's list."""
    q_n = len(trait.questions)
    tr: dict[str, Any] = {"question_ids": [q.id for q in trait.questions], "questions": [q.text for q in trait.questions],
                          "responses": answers, "scores": {}, "coherence": {}, "raw": {}, "reason": {}}

    def grid(xs: Sequence[Any]) -> list[Sequence[Any]]:
        return [xs[lo + i * n: lo + (i + 1) * n] for i in range(q_n)]

    def if_missing(x: Any, text: str | None) -> str:
        return (text or "") if math.isnan(nan_if_none(x.score)) else ""

    for name, (ts, cs) in per_judge.items():
        tr["scores"][name] = [[nan_if_none(x.score) for x in r] for r in grid(ts)]
        tr["coherence"][name] = [[nan_if_none(x.score) for x in r] for r in grid(cs)]
        # Keep the raw reply and the reason wherever a score is missing (never a silent 0).
        tr["raw"][name] = [[x.raw if math.isnan(nan_if_none(x.score)) else "" for x in r] for r in grid(ts)]
        tr["reason"][name] = [[if_missing(x, x.reason) for x in r] for r in grid(ts)]
        tr.setdefault("coherence_raw", {})[name] = [[if_missing(x, x.raw) for x in r] for r in grid(cs)]
        tr.setdefault("coherence_reason", {})[name] = [[if_missing(x, x.reason) for x in r] for r in grid(cs)]
    return tr


def build(step: int, traits: Sequence[Any], answers: list[list[str]], judge_names: Sequence[str],
          per_judge: Mapping[str, tuple[Sequence[Any], Sequence[Any]]]) -> dict[str, Any]:
    """One checkpoint's result from its answers (conversation order: every question of every trait,
    ``samples`` answers each) and each judge's (trait judgements, coherence judgements) in the same
    flat order. Judgements lost in transport are counted under ``judge_failed``: such a result is
    incomplete (the eval task sets it aside instead of writing it)."""
    n = len(answers[0]) if answers else 0
    failed = count_failures({name: list(ts) + list(cs) for name, (ts, cs) in per_judge.items()})
    out: dict[str, Any] = {"step": step, "judges": list(judge_names), "traits": {}}
    if failed:
        out["judge_failed"] = failed
    row = 0
    for t in traits:
        q_n = len(t.questions)
        out["traits"][t.name] = _trait_entry(t, answers[row: row + q_n], n, row * n, per_judge)
        row += q_n
    return out


def write(path: Path, result: Mapping[str, Any]) -> None:
    """Write a result (or a set-aside incomplete one) atomically."""
    atomic.write_text(path, json.dumps(result))


def read(path: Path) -> dict[str, Any]:
    """One per-checkpoint result, validated enough to consolidate; errors name the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConsolidationError(f"{path}: unreadable result file ({exc}); delete it and rerun the eval "
                                 f"array to redo that checkpoint") from None
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ConsolidationError(f"{path}: result file lacks '{key}'; delete it and rerun the eval array")
    return data


def trait_means(path: Path, judge: str | None = None) -> dict[str, float]:
    """Mean trait score of one result file per trait (default: the first judge), NaN-aware; {} if unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    j = judge or data["judges"][0]
    out = {}
    for t, tr in data["traits"].items():
        vals = [v for row in tr["scores"][j] for v in row if v is not None and not math.isnan(v)]
        out[t] = sum(vals) / len(vals) if vals else math.nan
    return out


def answers_record(traits: Sequence[Any], answers: list[list[str]]) -> dict[str, Any]:
    """A checkpoint's answers alone (conversation order, as generated) in the shape
    :func:`read_answers` reads back: what a checkpoint whose judges are still at work keeps."""
    out: dict[str, Any] = {}
    i = 0
    for t in traits:
        n = len(t.questions)
        out[t.name] = {"question_ids": [q.id for q in t.questions], "responses": answers[i:i + n]}
        i += n
    return {"traits": out}


def read_answers(path: Path, traits: Sequence[Any]) -> list[list[str]] | None:
    """The answers of a (set-aside) result in conversation order, or None when the file is absent or
    does not match the traits' questions (they are generated again then)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        answers: list[list[str]] = []
        for t in traits:
            tr = data["traits"][t.name]
            if tr["question_ids"] != [q.id for q in t.questions]:
                return None
            answers += [list(map(str, row)) for row in tr["responses"]]
        return answers
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable set-aside result; its checkpoint is generated again", path)
        return None


def merge_failures(failures: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several results' ``judge_failed`` summed per judge and reason."""
    merged: dict[str, dict[str, Any]] = {}
    for failed in failures:
        for judge, f in failed.items():
            m = merged.setdefault(judge, {"count": 0, "reasons": {}})
            m["count"] += f["count"]
            for reason, k in f["reasons"].items():
                m["reasons"][reason] = m["reasons"].get(reason, 0) + k
    return merged


def failed_summary(failed: Mapping[str, Mapping[str, Any]]) -> str:
    """``judge X: 12 judgements failed (http 500 after 6 retries x10, timeout after 6 retries x2)``."""
    parts = []
    for judge, f in failed.items():
        reasons = sorted(f["reasons"].items(), key=lambda kv: -kv[1])
        parts.append(f"judge {judge}: {f['count']} judgement(s) failed ("
                     + ", ".join(f"{r} x{k}" for r, k in reasons[:4]) + ")")
    return "; ".join(parts)
