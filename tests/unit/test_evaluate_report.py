"""The offline evaluation's report arithmetic, on hand-made rank vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import Record, bootstrap_differences, metric_rows, moves, target_rank


def record(items, target):
    return Record(user=0, stage="test", m=len(items), items=items, target=target, utilities={}, invalid={}, dropped={}, seconds=0.0)


def test_target_rank_is_its_position_in_the_reranked_list_or_minus_one():
    rec = record([10, 11, 12, 13], target=12)
    assert target_rank([0, 1, 2, 3], rec) == 2
    assert target_rank([2, 0, 1, 3], rec) == 0
    assert target_rank([0, 1, 2, 3], record([10, 11], target=99)) == -1


def test_metric_rows_cover_all_users_and_the_hit_subset():
    ranks = {"backbone": np.array([0, 4, -1, -1]), "hybrid": np.array([1, 0, -1, -1])}
    rows = {(r["method"], r["subset"]): r for r in metric_rows(ranks, ranks["backbone"] >= 0, m=10)}
    assert rows[("backbone", "all")]["users"] == 4 and rows[("backbone", "hit")]["users"] == 2
    assert rows[("backbone", "all")]["HR@3"] == pytest.approx(0.25)
    assert rows[("backbone", "hit")]["HR@5"] == pytest.approx(1.0)
    assert rows[("hybrid", "all")]["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1) / 4)


def test_moves_count_users_entering_and_leaving_the_top_k():
    ranks = {"backbone": np.array([0, 5, 2, -1]), "pairwise": np.array([4, 1, 2, -1])}
    assert moves(ranks, k=3) == {"pairwise": {"wrong_to_right": 1, "right_to_wrong": 1}}


def test_bootstrap_interval_brackets_the_observed_difference():
    rng = np.random.default_rng(0)
    base = rng.integers(-1, 10, 300)
    better = np.where(base > 0, base - 1, base)  # moves every hit one place up
    out = {(b["method"], b["metric"]): b for b in bootstrap_differences({"backbone": base, "x": better}, 10, 500, 0)}
    ndcg3 = out[("x", "NDCG@3")]
    assert ndcg3["low"] <= ndcg3["diff"] <= ndcg3["high"] and ndcg3["diff"] > 0
