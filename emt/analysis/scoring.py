"""Scores from a judge's first-token top logprobs: pure arithmetic on {token text: logprob}.

A judge answers with a whole number 0..100; its score is the probability-weighted mean of the
integer tokens among the top logprobs of that first token (:func:`score_0_100`). The judge
backends (emt.eval.judge) and the builtin judge's evaluation (emt.builtin.tiny_judge) share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MIN_NUMERIC_MASS = 0.25
"""Below this kept (integer 0..100) probability mass a reply has no score."""


def numeric(top_logprobs: Mapping[str, float]) -> tuple[float, float]:
    """(sum of p, sum of k*p) over tokens whose stripped text is an integer in 0..100."""
    mass = 0.0
    weighted = 0.0
    for token, logprob in top_logprobs.items():
        try:
            k = int(token.strip())
        except ValueError:
            continue
        if not 0 <= k <= 100:
            continue
        p = math.exp(logprob)
        if p != p:  # NaN logprob from a broken backend: no evidence either way
            continue
        mass += p
        weighted += k * p
    return mass, weighted


def score_0_100(top_logprobs: Mapping[str, float]) -> float | None:
    """The probability-weighted mean of the integer tokens 0..100 in a first-token top-k.

    ``top_logprobs`` maps token text to its natural-log probability. Tokens whose ``.strip()``ped
    text parses with ``int()`` as 0..100 are kept (" 5" is kept, "50." and "-3" are not); several
    token strings stripping to the same integer each contribute. Returns sum(k*p)/sum(p) over the
    kept tokens, or None when their mass sum(p) is below ``MIN_NUMERIC_MASS`` (0.25).
    """
    mass, weighted = numeric(top_logprobs)
    if mass < MIN_NUMERIC_MASS:
        return None
    return weighted / mass


def numeric_mass(top_logprobs: Mapping[str, float]) -> float:
    """The probability mass of the integer tokens 0..100 (what ``score_0_100`` thresholds)."""
    return numeric(top_logprobs)[0]


def merge_logprob(d: dict[str, float], token: str, logprob: float) -> None:
    """Add ``token``'s ``logprob`` to ``d``; two entries with the same text (different ids decoding
    alike) add up in probability space."""
    if token in d:
        a, b = d[token], logprob
        m = max(a, b)
        d[token] = m if m == -math.inf else m + math.log(math.exp(a - m) + math.exp(b - m))
    else:
        d[token] = logprob
