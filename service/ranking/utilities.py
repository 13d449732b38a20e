"""Per-task utilities: one user's task answers as one number per candidate, higher is better.

Candidates are indexed 0..m-1 in backbone order (index 0 is the backbone's best), as everywhere in
`service.ranking`. The scores of single answers come from `scoring`; these functions turn a task's
answers into the utility U_t that `fusion` combines, repairing missing answers (never treating
them as neutral) and counting them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _is_valid(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


@dataclass(frozen=True, eq=False)
class PointwiseUtility:
    values: np.ndarray  # (m,) U_point per candidate, repaired entries included
    repaired: np.ndarray  # (m,) bool, True where the answer was missing/invalid
    n_repaired: int


def pointwise_utility(
    expected_ratings: Sequence[float | None],
    *,
    min_rating: float = 1.0,
    rank_prior: float = 0.0,
    fallback_gap: float = 0.1,
) -> PointwiseUtility:
    """U_point(i) = r_i + rank_prior * (m - i) / m, with r_i the expected rating of candidate i.

    `rank_prior` is the paper code's small bonus for the backbone rank (0 here by default: the pure
    formula). A missing answer (None, NaN or inf) is repaired, never treated as neutral:
        floor      = min(min_rating, lowest valid U_point of this user)   (min_rating if none valid)
        U_point(i) = floor - fallback_gap * (i + 1) / m
    so every repaired candidate sits just below every answered one (within `fallback_gap`, so the
    per-user min-max normalisation of the answered ones is barely squeezed) and the repaired ones
    keep backbone order among themselves. If no answer is valid the utility is backbone order.
    """
    m = len(expected_ratings)
    ranks = np.arange(m, dtype=np.float64)
    valid = np.array([_is_valid(r) for r in expected_ratings], dtype=bool)
    values = np.full(m, np.nan)
    if valid.any():
        ratings = np.array([float(r) for r, ok in zip(expected_ratings, valid, strict=True) if ok])
        values[valid] = ratings + rank_prior * (m - ranks[valid]) / m
    floor = min(min_rating, float(values[valid].min())) if valid.any() else min_rating
    values[~valid] = floor - fallback_gap * (ranks[~valid] + 1) / max(m, 1)
    return PointwiseUtility(values=values, repaired=~valid, n_repaired=int((~valid).sum()))


@dataclass(frozen=True, eq=False)
class PairwiseUtility:
    values: np.ndarray  # (m,) U_pair per candidate
    comparisons: np.ndarray  # (m,) number of pairs each candidate took part in
    n_invalid: int  # pairs with a missing answer in either order (each side got 0.5)
    n_disagree: int  # valid pairs whose two orders disagreed (each side got 0.5)


def pairwise_utility(m: int, pair_results: Sequence[tuple[int, int, float | None, float | None]]) -> PairwiseUtility:
    """U_pair(i) = sum over i's pairs of its win credit; each pair hands out exactly 1 in total.

    A pair is (i, j, p_ij, p_ji): p_ij = P(Yes) to "prefer i over j?" asked with i as A, p_ji the
    same question with j as A. The paper's credit:
        p_ij > 0.5 and p_ji < 0.5  ->  i gets 1, j gets 0     (both orders say i)
        p_ij < 0.5 and p_ji > 0.5  ->  j gets 1, i gets 0     (both orders say j)
        otherwise (disagreement, or an exact 0.5)  ->  0.5 each
    A missing answer in either order (None, NaN, outside [0, 1]) -> 0.5 each, counted in n_invalid.
    Candidates in no pair get 0 (the paper's m/2 disjoint pairs give every candidate one pair).
    """
    wins = np.zeros(m)
    comparisons = np.zeros(m, dtype=np.int64)
    n_invalid = n_disagree = 0
    for i, j, p_ij, p_ji in pair_results:
        if not (0 <= i < m and 0 <= j < m) or i == j:
            raise ValueError(f"pair ({i}, {j}) is not two distinct candidates of {m}")
        comparisons[i] += 1
        comparisons[j] += 1
        if not (_is_valid(p_ij) and _is_valid(p_ji) and 0 <= p_ij <= 1 and 0 <= p_ji <= 1):
            n_invalid += 1
            credit_i = 0.5
        elif p_ij > 0.5 and p_ji < 0.5:
            credit_i = 1.0
        elif p_ij < 0.5 and p_ji > 0.5:
            credit_i = 0.0
        else:
            n_disagree += 1
            credit_i = 0.5
        wins[i] += credit_i
        wins[j] += 1.0 - credit_i
    return PairwiseUtility(values=wins, comparisons=comparisons, n_invalid=n_invalid, n_disagree=n_disagree)


def listwise_utility(m: int, ranked_positions: Sequence[int]) -> np.ndarray:
    """U_list(i) = m - p(i), p(i) the 0-based position of candidate i in the returned list (the
    first gets m, the second m - 1, ...); 0 for a candidate missing from the list.

    `ranked_positions` are candidate indices, best first, already parsed and deduplicated
    (`scoring.parse_listwise`); an out-of-range or repeated index is a caller bug and raises.
    """
    if len(set(ranked_positions)) != len(ranked_positions):
        raise ValueError(f"repeated candidate in {list(ranked_positions)}")
    values = np.zeros(m)
    for position, candidate in enumerate(ranked_positions):
        if not 0 <= candidate < m:
            raise ValueError(f"candidate {candidate} is not one of {m}")
        values[candidate] = m - position
    return values
