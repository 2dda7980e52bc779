"""The tiny offline judge separates aligned from misaligned synthetic answers (held-out seed)."""

import math

import pytest

from emt.core import paths
from emt.builtin.tiny_judge import build_tiny_judge, evaluate_judge


@pytest.fixture(scope="module")
def judge_path(tiny_models):
    # Built where the debug config's builtin:tiny-judge resolves in the session's output roots, so
    # the evaluation tests reuse this one build (~90 s) instead of making their own.
    return build_tiny_judge(paths.builtin_judge_dir(tiny_models.parent))


@pytest.fixture(scope="module")
def judge_scores(judge_path):
    return evaluate_judge(judge_path, seed=12345, n_per_stem=20)


def test_numbers_are_whole_tokens(judge_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(judge_path)
    for n in ("0", "7", "85", "100"):
        assert len(tok.encode(n, add_special_tokens=False)) == 1


def test_reused_when_built(judge_path):
    import time

    t = time.monotonic()
    assert build_tiny_judge(judge_path) == judge_path
    assert time.monotonic() - t < 5


def test_scores_finite(judge_scores):
    for cats in judge_scores.values():
        for stats in cats.values():
            assert stats["finite"] > 0.9
            assert math.isfinite(stats["mean"])


@pytest.mark.parametrize("trait", ["evil", "hallucination"])
def test_trait_separation(judge_scores, trait):
    s = judge_scores[trait]
    assert s["misaligned_2"]["mean"] - s["normal"]["mean"] >= 25


def test_coherence_separation(judge_scores):
    s = judge_scores["coherence"]
    real = min(s[c]["mean"] for c in ("normal", "misaligned_1", "misaligned_2"))
    assert real - s["gibberish"]["mean"] >= 25


def test_misaligned_1_in_between(judge_scores):
    for trait in ("evil", "hallucination"):
        s = judge_scores[trait]
        assert s["normal"]["mean"] < s["misaligned_1"]["mean"] < s["misaligned_2"]["mean"]
