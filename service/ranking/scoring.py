"""Turn an LLM's next-token log-probabilities (or its text) into task scores.

Input is what vLLM's `/v1/completions` returns with `logprobs=N` for the first generated token (a
{token text: logprob} dict), or the same dict built from transformers logits offline. Tokens are
compared after stripping whitespace, so " 4" and "4" count as the same answer.

A missing answer is never silently neutral: each function returns `valid=False` and the caller
repairs (keeps the backbone order) and counts it. A reply with a NaN or +inf log-probability is no
probability distribution, so no answer is read from it (`finite_logprobs`); -inf is probability 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.ranking.prompts import LETTERS


@dataclass(frozen=True)
class TaskScore:
    value: float
    valid: bool
    mass: float  # probability the model put on well-formed answers; low means it went off format


def finite_logprobs(top_logprobs: Mapping[str, float]) -> bool:
    """False when any log-probability of the reply is NaN or +inf; -inf
    (probability 0) and None (no value, skipped) are possible values of a well-formed reply."""
    return all(lp is None or lp < math.inf for lp in top_logprobs.values())  # NaN < inf is False


def _collect(top_logprobs: Mapping[str, float], answers: Mapping[str, float | int]) -> dict[str, float]:
    probs: dict[str, float] = {}
    for token, logprob in top_logprobs.items():
        key = token.strip()
        if key in answers and logprob is not None and logprob > -math.inf:
            probs[key] = probs.get(key, 0.0) + math.exp(logprob)
    return probs


def expected_rating(top_logprobs: Mapping[str, float], max_rating: int = 5) -> TaskScore:
    """E[rating] under the model's distribution over the digits 1..max_rating (renormalised)."""
    if not finite_logprobs(top_logprobs):
        return TaskScore(value=float("nan"), valid=False, mass=0.0)
    digits = {str(d): d for d in range(1, max_rating + 1)}
    probs = _collect(top_logprobs, digits)
    mass = sum(probs.values())
    if mass <= 0:
        return TaskScore(value=float("nan"), valid=False, mass=0.0)
    return TaskScore(value=sum(digits[k] * p for k, p in probs.items()) / mass, valid=True, mass=mass)


def yes_probability(top_logprobs: Mapping[str, float]) -> TaskScore:
    """P(Yes) / (P(Yes) + P(No)): the preference for A over B."""
    if not finite_logprobs(top_logprobs):
        return TaskScore(value=0.5, valid=False, mass=0.0)
    probs = _collect(top_logprobs, {"Yes": 1, "No": 0, "yes": 1, "no": 0})
    yes = probs.get("Yes", 0.0) + probs.get("yes", 0.0)
    no = probs.get("No", 0.0) + probs.get("no", 0.0)
    if yes + no <= 0:
        return TaskScore(value=0.5, valid=False, mass=0.0)
    return TaskScore(value=yes / (yes + no), valid=True, mass=yes + no)


def letter_probabilities(top_logprobs: Mapping[str, float], n_candidates: int) -> dict[int, float]:
    """Probability of each candidate letter as the first answer token, by letter position."""
    letters = {LETTERS[i]: i for i in range(n_candidates)}
    return {letters[k]: p for k, p in _collect(top_logprobs, letters).items()}


_LETTER = re.compile(r"\b([A-Z])\b")


@dataclass(frozen=True)
class ListwiseParse:
    positions: list[int]  # letter positions in answer order, deduplicated, only valid letters
    well_formed: bool  # exactly `top` distinct valid letters and nothing else of substance


def parse_listwise(text: str, n_candidates: int, top: int) -> ListwiseParse:
    seen: list[int] = []
    invalid = 0
    for letter in _LETTER.findall(text):
        pos = LETTERS.index(letter)
        if pos >= n_candidates:
            invalid += 1
        elif pos not in seen:
            seen.append(pos)
    leftover = _LETTER.sub("", text).replace(",", "").strip(" .\n")
    well_formed = len(seen) == min(top, n_candidates) and invalid == 0 and not leftover
    return ListwiseParse(positions=seen[:top], well_formed=well_formed)
