"""HR@k and NDCG@k, checked against values computed by hand."""

import math

import numpy as np
import pytest

from training.metrics import (
    hit_rate_at_k,
    hr_from_ranks,
    metrics_from_ranks,
    ndcg_at_k,
    ndcg_from_ranks,
    target_ranks,
)


def test_hit_rate_counts_a_relevant_item_inside_the_cutoff_only():
    ranked = ["a", "b", "c", "d"]
    assert hit_rate_at_k(ranked, {"c"}, 3) == 1.0
    assert hit_rate_at_k(ranked, {"d"}, 3) == 0.0
    assert hit_rate_at_k(ranked, set(), 3) == 0.0


def test_ndcg_of_single_item_is_inverse_log_of_its_position():
    ranked = ["a", "b", "c", "d", "e"]
    assert ndcg_at_k(ranked, {"a"}, 5) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, {"b"}, 5) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at_k(ranked, {"e"}, 5) == pytest.approx(1 / math.log2(6))  # 0.3869
    assert ndcg_at_k(ranked, {"e"}, 3) == 0.0


def test_ndcg_with_two_relevant_items_divides_by_ideal_dcg():
    # relevant at positions 1 and 3 (0-based): DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "b", "c", "d"], {"b", "d"}, 4) == pytest.approx(expected)
    assert expected == pytest.approx(0.6509, abs=1e-4)


def test_rank_based_metrics_agree_with_list_metrics():
    ranks = np.array([0, 1, 4, 9, 20, -1])
    assert hr_from_ranks(ranks, 3) == pytest.approx(2 / 6)
    assert hr_from_ranks(ranks, 10) == pytest.approx(4 / 6)
    assert ndcg_from_ranks(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    items = list(range(30))
    for r in ranks[ranks >= 0]:
        for k in (3, 5, 10):
            assert ndcg_from_ranks(np.array([r]), k) == pytest.approx(ndcg_at_k(items, {int(r)}, k))
    assert set(metrics_from_ranks(ranks)) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (3, 5, 10)}


def test_target_rank_breaks_ties_by_item_index_and_respects_masking():
    scores = np.array([[0.5, 0.9, 0.5, -np.inf, 0.1]])
    assert target_ranks(scores, np.array([2])).tolist() == [2]  # behind 0.9 and the tied item 0
    assert target_ranks(scores, np.array([0])).tolist() == [1]
    assert target_ranks(scores, np.array([4])).tolist() == [3]  # the masked item does not count
