"""Per-task utilities: each task's answers as one number per candidate, with missing answers
repaired (never neutral) and counted. Formulas are pinned on small cases computed by hand."""

from __future__ import annotations

import pytest

from service.ranking.fusion import rank_by
from service.ranking.utilities import listwise_utility, pairwise_utility, pointwise_utility

# -- pointwise ---------------------------------------------------------------------------------------


def test_pointwise_utility_is_the_expected_rating():
    u = pointwise_utility([4.2, 3.0, 4.8])
    assert u.values.tolist() == pytest.approx([4.2, 3.0, 4.8])
    assert u.n_repaired == 0


def test_pointwise_rank_prior_adds_a_bonus_decreasing_with_backbone_rank():
    # m = 4, prior 0.2: bonus 0.2 * (4 - i) / 4 = 0.2, 0.15, 0.1, 0.05
    u = pointwise_utility([3.0, 3.0, 3.0, 3.0], rank_prior=0.2)
    assert u.values.tolist() == pytest.approx([3.2, 3.15, 3.1, 3.05])


def test_missing_pointwise_answers_fall_back_to_backbone_order_and_are_counted():
    # valid: 4.0 (i=1), 2.5 (i=3); floor = min(1.0, 2.5) = 1.0; repaired i: 1.0 - 0.1 * (i + 1) / 5
    u = pointwise_utility([None, 4.0, float("nan"), 2.5, float("inf")])
    assert u.n_repaired == 3
    assert u.repaired.tolist() == [True, False, True, False, True]
    assert u.values.tolist() == pytest.approx([1.0 - 0.02, 4.0, 1.0 - 0.06, 2.5, 1.0 - 0.1])
    # every repaired candidate ranks below every answered one, repaired ones in backbone order
    assert rank_by(u.values) == [1, 3, 0, 2, 4]


def test_pointwise_with_no_valid_answer_is_backbone_order():
    u = pointwise_utility([None, None, None])
    assert u.n_repaired == 3
    assert rank_by(u.values) == [0, 1, 2]


# -- pairwise ----------------------------------------------------------------------------------------


def test_pairwise_win_counts_only_when_both_orders_agree():
    pairs = [
        (0, 1, 0.9, 0.2),  # both orders prefer 0        -> 0: 1, 1: 0
        (2, 3, 0.3, 0.8),  # both orders prefer 3        -> 2: 0, 3: 1
        (4, 5, 0.7, 0.6),  # A-bias: each order says "A" -> 0.5 each
    ]
    u = pairwise_utility(6, pairs)
    assert u.values.tolist() == [1.0, 0.0, 0.0, 1.0, 0.5, 0.5]
    assert u.n_disagree == 1
    assert u.n_invalid == 0


def test_pairwise_exact_half_is_not_a_win():
    assert pairwise_utility(2, [(0, 1, 0.5, 0.2)]).values.tolist() == [0.5, 0.5]


def test_pairwise_invalid_answer_gives_half_each_and_is_counted():
    u = pairwise_utility(4, [(0, 1, None, 0.1), (2, 3, 0.8, float("nan"))])
    assert u.values.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert u.n_invalid == 2


def test_pairwise_wins_add_up_over_pairs_and_unpaired_candidates_get_zero():
    pairs = [(0, 1, 0.9, 0.1), (0, 2, 0.8, 0.3), (1, 2, 0.4, 0.7)]  # 0 beats 1 and 2; 2 beats 1
    u = pairwise_utility(4, pairs)
    assert u.values.tolist() == [2.0, 0.0, 1.0, 0.0]
    assert u.comparisons.tolist() == [2, 2, 2, 0]


def test_pairwise_rejects_a_pair_that_is_not_two_candidates():
    with pytest.raises(ValueError):
        pairwise_utility(3, [(1, 1, 0.9, 0.1)])
    with pytest.raises(ValueError):
        pairwise_utility(3, [(0, 3, 0.9, 0.1)])


# -- listwise ----------------------------------------------------------------------------------------


def test_listwise_utility_is_m_minus_position_and_zero_when_missing():
    # m = 5, returned C, A, E: C -> 5, A -> 4, E -> 3, B and D missing -> 0
    assert listwise_utility(5, [2, 0, 4]).tolist() == [4.0, 0.0, 5.0, 0.0, 3.0]


def test_listwise_utility_rejects_repeats_and_unknown_candidates():
    with pytest.raises(ValueError):
        listwise_utility(5, [2, 2])
    with pytest.raises(ValueError):
        listwise_utility(5, [7])
