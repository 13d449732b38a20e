"""Fusion: task utilities, the fixed-weight hybrid and the learned LambdaRank fusion.

Formulas are pinned on small cases computed by hand; the learned fusion on synthetic users.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.ranking.fusion import (
    BACKBONE_RANK,
    DEFAULT_WEIGHTS,
    LearnedFusion,
    LearnedFusionConfig,
    UserGroup,
    _ndcg,
    feature_matrix,
    hybrid_scores,
    hybrid_scores_of,
    listwise_utility,
    minmax_normalise,
    pairwise_utility,
    pointwise_utility,
    prior_scores_of,
    rank_by,
)
from training.metrics import ndcg_at_k

# Small, fast, single-threaded: the whole file must stay well under 20 s on a busy 2-core box.
FAST = LearnedFusionConfig(n_estimators=20, learning_rate=0.1, guard_folds=3, n_jobs=1)


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


def test_pairwise_soft_credit_averages_both_orders():
    # i gets (p_ij + 1 - p_ji) / 2 = (0.9 + 1 - 0.2) / 2 = 0.85, j gets 0.15; (0.7 + 1 - 0.6) / 2 = 0.55
    u = pairwise_utility(4, [(0, 1, 0.9, 0.2), (2, 3, 0.7, 0.6)], soft=True)
    assert u.values.tolist() == pytest.approx([0.85, 0.15, 0.55, 0.45])


def test_pairwise_invalid_answer_gives_half_each_and_is_counted():
    u = pairwise_utility(4, [(0, 1, None, 0.1), (2, 3, 0.8, float("nan"))], soft=True)
    assert u.values.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert u.n_invalid == 2


def test_pairwise_wins_add_up_over_pairs_and_unpaired_candidates_get_zero_or_half_when_averaged():
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


# -- hybrid ------------------------------------------------------------------------------------------


def test_minmax_normalise_maps_to_unit_interval_and_constant_to_zero():
    assert minmax_normalise(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax_normalise(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
    assert minmax_normalise(np.array([1.0, np.nan, 5.0])).tolist() == [0.0, 0.0, 1.0]


def test_hybrid_with_equal_weights_on_hand_computed_case():
    # m = 4
    point = np.array([4.0, 2.0, 5.0, 3.0])  # norm: 2/3, 0, 1, 1/3
    pair = np.array([1.0, 0.0, 0.5, 0.5])  # norm: 1, 0, 0.5, 0.5
    lst = listwise_utility(4, [1, 2])  # [0, 4, 3, 0] -> norm: 0, 1, 0.75, 0
    u = hybrid_scores({"pointwise": point, "pairwise": pair, "listwise": lst})
    expected = np.array([2 / 3 + 1 + 0, 0 + 0 + 1, 1 + 0.5 + 0.75, 1 / 3 + 0.5 + 0]) / 3
    assert u.tolist() == pytest.approx(expected.tolist())  # [0.5556, 0.3333, 0.75, 0.2778]
    assert rank_by(u) == [2, 0, 1, 3]


def test_hybrid_uses_only_the_tasks_present_with_their_weights():
    point = np.array([1.0, 3.0, 2.0])  # norm 0, 1, 0.5
    lst = np.array([3.0, 0.0, 2.0])  # norm 1, 0, 2/3
    u = hybrid_scores({"pointwise": point, "listwise": lst}, {"pointwise": 0.25, "listwise": 0.75, "pairwise": 9.0})
    assert u.tolist() == pytest.approx([0.75, 0.25, 0.125 + 0.5])
    with pytest.raises(ValueError):
        hybrid_scores({"pointwise": point}, {"listwise": 1.0})


def test_rank_by_breaks_ties_by_backbone_order():
    assert rank_by(np.array([0.5, 0.9, 0.5, 0.9, np.nan])) == [1, 3, 0, 2, 4]
    # all-constant utilities -> hybrid all 0 -> backbone order
    assert rank_by(hybrid_scores({"pairwise": np.full(4, 0.5)})) == [0, 1, 2, 3]


# -- features ----------------------------------------------------------------------------------------


def test_feature_matrix_records_columns_in_order_with_nan_for_tasks_not_run():
    f = feature_matrix(
        3,
        pointwise=np.array([4.0, 3.0, 5.0]),
        listwise=np.array([2.0, 3.0, 0.0]),
        backbone_scores=np.array([0.9, 0.8, 0.1]),
        extra={"popularity": np.array([10.0, 20.0, 30.0]), "genre_overlap": np.array([0.1, 0.2, 0.3])},
    )
    assert f.names == ("pointwise", "pairwise", "listwise", "backbone_score", "backbone_rank", "popularity", "genre_overlap")
    assert f.values.shape == (3, 7)
    assert np.isnan(f.column("pairwise")).all()
    assert f.column(BACKBONE_RANK).tolist() == [0.0, 1.0, 2.0]
    assert f.column("popularity").tolist() == [10.0, 20.0, 30.0]


def test_feature_matrix_rejects_a_wrong_length_or_clashing_name():
    with pytest.raises(ValueError):
        feature_matrix(3, pointwise=np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        feature_matrix(2, extra={"backbone_rank": np.array([1.0, 2.0])})


def test_local_ndcg_matches_training_metrics():
    labels = np.array([0, 0, 1, 0, 0])
    order = [4, 2, 0, 1, 3]
    assert _ndcg(order, labels, 5) == pytest.approx(ndcg_at_k(order, {2}, 5))
    assert _ndcg(order, labels, 5) == pytest.approx(1 / math.log2(3))
    assert _ndcg(order, np.zeros(5), 5) == 0.0


# -- learned fusion ----------------------------------------------------------------------------------


def _synthetic_groups(n_users: int, m: int, seed: int, planted: bool) -> list[UserGroup]:
    """Relevant item drawn with P(i) ~ 1/(i+1): the backbone is informative. With `planted`, the
    pointwise utility is 5 for the relevant item and uniform in [1, 4] otherwise; without it every
    LLM utility is pure noise."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, m + 1)
    prior /= prior.sum()
    groups = []
    for _ in range(n_users):
        relevant = int(rng.choice(m, p=prior))
        point = rng.uniform(1.0, 5.0, m)
        if planted:
            point = rng.uniform(1.0, 4.0, m)
            point[relevant] = 5.0
        features = feature_matrix(
            m,
            pointwise=point,
            pairwise=rng.integers(0, 2, m).astype(float),
            listwise=listwise_utility(m, list(rng.permutation(m)[:3])),
            backbone_scores=np.sort(rng.uniform(0, 1, m))[::-1],
        )
        groups.append(UserGroup.with_relevant(features, relevant))
    return groups


def test_learned_fusion_recovers_a_planted_signal():
    groups = _synthetic_groups(120, 8, seed=1, planted=True)
    report = LearnedFusion(LearnedFusionConfig(**{**FAST.__dict__, "guard": False})).cross_validated_ndcg(groups, folds=3, k=5)
    assert report.learned > report.backbone + 0.2
    assert report.learned > 0.9
    fusion = LearnedFusion(FAST).fit(groups)
    assert not fusion.fallback_
    assert fusion.rank(groups[0].features)[0] == int(np.argmax(groups[0].labels))


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_learned_fusion_never_worse_than_backbone_or_hybrid_on_noise(seed):
    groups = _synthetic_groups(120, 8, seed=seed, planted=False)
    report = LearnedFusion(FAST).cross_validated_ndcg(groups, folds=3, k=5)
    # on ~80 training users the unguarded model overfits the noise and loses to the backbone;
    # the guard, decided on the training folds only, keeps the held-out NDCG at the backbone's
    assert report.learned < report.backbone
    assert report.guarded >= report.backbone
    assert report.guarded >= report.hybrid
    fusion = LearnedFusion(FAST).fit(groups)
    assert fusion.guard_report_ is not None
    assert fusion.fallback_ in ("hybrid", "backbone")  # noise never clearly beats a fallback
    if fusion.fallback_ == "backbone":
        for g in groups[:5]:
            assert fusion.rank(g.features) == list(range(g.features.m))


def test_guard_falls_back_to_backbone_order_when_cv_says_the_model_is_worse():
    groups = _synthetic_groups(60, 6, seed=3, planted=False)
    overfit = LearnedFusionConfig(
        **{**FAST.__dict__, "n_estimators": 100, "learning_rate": 0.3, "num_leaves": 31, "min_child_samples": 2}
    )
    fusion = LearnedFusion(overfit).fit(groups)
    assert fusion.guard_report_ is not None
    assert fusion.guard_report_.learned < fusion.guard_report_.backbone
    assert fusion.fallback_ == "backbone"  # on pure noise the hybrid loses to the backbone too
    g = groups[0]
    assert fusion.predict(g.features).tolist() == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # m - backbone_rank
    assert fusion.rank(g.features) == list(range(6))
    assert rank_by(fusion.model_scores(g.features)) != list(range(6))  # the model itself is still there


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    groups = _synthetic_groups(60, 6, seed=4, planted=True)
    fusion = LearnedFusion(LearnedFusionConfig(**{**FAST.__dict__, "guard": False})).fit(groups)
    path = tmp_path / "fusion.txt"
    fusion.save(path)
    assert (tmp_path / "fusion.txt.json").exists()
    loaded = LearnedFusion.load(path)
    assert loaded.feature_names_ == fusion.feature_names_
    assert loaded.config == fusion.config
    assert loaded.fallback_ == fusion.fallback_
    for g in groups[:10]:
        np.testing.assert_array_equal(loaded.predict(g.features), fusion.predict(g.features))


def test_predict_rejects_features_in_a_different_order():
    groups = _synthetic_groups(30, 5, seed=5, planted=True)
    fusion = LearnedFusion(LearnedFusionConfig(**{**FAST.__dict__, "guard": False})).fit(groups)
    other = feature_matrix(5, extra={"popularity": np.ones(5)})
    with pytest.raises(ValueError):
        fusion.predict(other)


def _noise_groups(n_users: int, m: int, seed: int) -> list[UserGroup]:
    """Nothing is informative: the relevant item is uniform and every utility is noise."""
    rng = np.random.default_rng(seed)
    return [
        UserGroup.with_relevant(
            feature_matrix(m, pointwise=rng.uniform(1, 5, m), pairwise=rng.integers(0, 2, m).astype(float),
                           listwise=listwise_utility(m, list(rng.permutation(m)[:3])), backbone_scores=np.sort(rng.uniform(0, 1, m))[::-1]),
            int(rng.integers(m)),
        )
        for _ in range(n_users)
    ]


def test_without_clear_evidence_the_learned_fusion_is_the_hybrid():
    """Near-equal rankings on a few dozen users are noise: the guard keeps the hybrid rather than
    flipping to whichever looked better on the training folds."""
    groups = _noise_groups(90, 8, seed=7)
    fusion = LearnedFusion(FAST).fit(groups)
    assert fusion.fallback_ == "hybrid"
    for g in groups[:10]:
        assert fusion.rank(g.features) == rank_by(hybrid_scores_of(g.features))


def test_the_trees_start_from_the_hybrid_ranking_as_evenly_spaced_scores():
    rng = np.random.default_rng(8)
    features = feature_matrix(6, pointwise=rng.uniform(1, 5, 6), listwise=listwise_utility(6, [4, 2, 0]))
    prior = prior_scores_of(features, DEFAULT_WEIGHTS, 2.0)
    assert rank_by(prior) == rank_by(hybrid_scores_of(features))
    assert sorted(prior) == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])
    without_tasks = feature_matrix(6, backbone_scores=np.linspace(1, 0, 6))
    assert rank_by(prior_scores_of(without_tasks, DEFAULT_WEIGHTS, 1.0)) == list(range(6))


def test_a_model_that_learns_nothing_ranks_like_the_hybrid():
    groups = _synthetic_groups(60, 6, seed=9, planted=True)
    still = LearnedFusionConfig(**{**FAST.__dict__, "learning_rate": 1e-9, "guard": False})
    fusion = LearnedFusion(still).fit(groups)
    for g in groups[:10]:
        assert fusion.rank(g.features) == rank_by(hybrid_scores_of(g.features))


def test_the_guard_wants_a_consistent_paired_gain_over_enough_users():
    from service.ranking.fusion import clearly_better

    a, b = np.zeros(40), np.zeros(40)
    a[:6] = 1.0  # six wins, no loss: too few users differ to tell
    assert not clearly_better(a, b, z=2.0)
    a[:14] = 1.0  # fourteen wins: a mean gain of 4.6 standard errors
    assert clearly_better(a, b, z=2.0)
    b[14:24] = 1.0  # and ten losses of the same size: 1.0 standard error
    assert not clearly_better(a, b, z=2.0)


def test_the_guard_weighs_how_far_the_relevant_item_moved_not_only_who_won():
    from service.ranking.fusion import clearly_better

    rng = np.random.default_rng(0)
    a, b = np.zeros(900), np.zeros(900)
    users = rng.permutation(900)
    a[users[:60]] = 0.5  # sixty users gain half an NDCG point (their item moved from 8th to 2nd) ...
    b[users[60:110]] = 0.1  # ... fifty lose a tenth: 10 net wins, below a sign test's 2.25 * sqrt(110)
    assert clearly_better(a, b, z=2.25)
    assert not clearly_better(b, a, z=2.25)
