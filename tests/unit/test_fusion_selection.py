"""Offline selection of the fusion: fitting the learned fusion, its cross-validation, the guard that
keeps the hybrid or the backbone order without clear evidence, and the hybrid's weight search.
The learned fusion is checked on synthetic users."""

from __future__ import annotations

import numpy as np
import pytest

from service.ranking.fusion import BACKBONE, feature_matrix, fuse, hybrid_scores_of, rank_by
from service.ranking.utilities import listwise_utility
from training.evaluation.fusion_selection import (
    LearnedFusionConfig,
    UserGroup,
    clearly_better,
    cross_validate,
    fit_learned_fusion,
    select_hybrid_weights,
)

# Small, fast, single-threaded: the whole file must stay well under 20 s on a busy 2-core box.
FAST = LearnedFusionConfig(n_estimators=20, learning_rate=0.1, guard_folds=3, n_jobs=1)
UNGUARDED = LearnedFusionConfig(**{**FAST.__dict__, "guard": False})


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
        utilities = {"pointwise": point, "pairwise": rng.integers(0, 2, m).astype(float), "listwise": listwise_utility(m, list(rng.permutation(m)[:3]))}
        features = feature_matrix(m, utilities, backbone_scores=np.sort(rng.uniform(0, 1, m))[::-1])
        groups.append(UserGroup.with_relevant(features, relevant))
    return groups


def _noise_groups(n_users: int, m: int, seed: int) -> list[UserGroup]:
    """Nothing is informative: the relevant item is uniform and every utility is noise."""
    rng = np.random.default_rng(seed)
    return [
        UserGroup.with_relevant(
            feature_matrix(m, {"pointwise": rng.uniform(1, 5, m), "pairwise": rng.integers(0, 2, m).astype(float),
                               "listwise": listwise_utility(m, list(rng.permutation(m)[:3]))},
                           backbone_scores=np.sort(rng.uniform(0, 1, m))[::-1]),
            int(rng.integers(m)),
        )
        for _ in range(n_users)
    ]


def test_learned_fusion_recovers_a_planted_signal():
    groups = _synthetic_groups(120, 8, seed=1, planted=True)
    report, _ = cross_validate(groups, UNGUARDED, folds=3, k=5)
    assert report.learned > report.backbone + 0.2
    assert report.learned > 0.9
    fusion = fit_learned_fusion(groups, FAST)
    assert not fusion.fallback_
    assert rank_by(fusion.predict(groups[0].features))[0] == int(np.argmax(groups[0].labels))


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_learned_fusion_never_worse_than_backbone_or_hybrid_on_noise(seed):
    groups = _synthetic_groups(120, 8, seed=seed, planted=False)
    report, _ = cross_validate(groups, FAST, folds=3, k=5)
    # on ~80 training users the unguarded model overfits the noise and loses to the backbone;
    # the guard, decided on the training folds only, keeps the held-out NDCG at the backbone's
    assert report.learned < report.backbone
    assert report.guarded >= report.backbone
    assert report.guarded >= report.hybrid
    fusion = fit_learned_fusion(groups, FAST)
    assert fusion.fit_details_["guard_report"] is not None
    assert fusion.fallback_ in ("hybrid", "backbone")  # noise never clearly beats a fallback
    if fusion.fallback_ == "backbone":
        for g in groups[:5]:
            assert rank_by(fusion.predict(g.features)) == list(range(g.features.m))


def test_guard_falls_back_to_backbone_order_when_cv_says_the_model_is_worse():
    groups = _synthetic_groups(60, 6, seed=3, planted=False)
    overfit = LearnedFusionConfig(**{**FAST.__dict__, "n_estimators": 100, "learning_rate": 0.3, "num_leaves": 31, "min_child_samples": 2})
    fusion = fit_learned_fusion(groups, overfit)
    guard = fusion.fit_details_["guard_report"]
    assert guard["learned"] < guard["backbone"]
    assert fusion.fallback_ == "backbone"  # on pure noise the hybrid loses to the backbone too
    g = groups[0]
    assert fusion.predict(g.features).tolist() == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # m - backbone_rank
    assert rank_by(fusion.model_scores(g.features)) != list(range(6))  # the model itself is still there


def test_without_clear_evidence_the_learned_fusion_is_the_hybrid():
    """Near-equal rankings on a few dozen users are noise: the guard keeps the hybrid rather than
    flipping to whichever looked better on the training folds."""
    groups = _noise_groups(90, 8, seed=7)
    fusion = fit_learned_fusion(groups, FAST)
    assert fusion.fallback_ == "hybrid"
    for g in groups[:10]:
        assert rank_by(fusion.predict(g.features)) == rank_by(hybrid_scores_of(g.features))


def test_a_model_that_learns_nothing_ranks_like_the_hybrid():
    groups = _synthetic_groups(60, 6, seed=9, planted=True)
    still = LearnedFusionConfig(**{**FAST.__dict__, "learning_rate": 1e-9, "guard": False})
    fusion = fit_learned_fusion(groups, still)
    for g in groups[:10]:
        assert rank_by(fusion.predict(g.features)) == rank_by(hybrid_scores_of(g.features))


def test_fitting_needs_the_same_features_for_every_user_and_the_backbone_rank():
    groups = _synthetic_groups(10, 4, seed=1, planted=True)
    other = UserGroup.with_relevant(feature_matrix(4, extra={"popularity": np.ones(4)}), 0)
    with pytest.raises(ValueError):
        fit_learned_fusion([*groups, other], UNGUARDED)
    with pytest.raises(ValueError):
        fit_learned_fusion([], UNGUARDED)


def test_the_guard_wants_a_consistent_paired_gain_over_enough_users():
    a, b = np.zeros(40), np.zeros(40)
    a[:6] = 1.0  # six wins, no loss: too few users differ to tell
    assert not clearly_better(a, b, z=2.0)
    a[:14] = 1.0  # fourteen wins: a mean gain of 4.6 standard errors
    assert clearly_better(a, b, z=2.0)
    b[14:24] = 1.0  # and ten losses of the same size: 1.0 standard error
    assert not clearly_better(a, b, z=2.0)


def test_the_guard_weighs_how_far_the_relevant_item_moved_not_only_who_won():
    rng = np.random.default_rng(0)
    a, b = np.zeros(900), np.zeros(900)
    users = rng.permutation(900)
    a[users[:60]] = 0.5  # sixty users gain half an NDCG point (their item moved from 8th to 2nd) ...
    b[users[60:110]] = 0.1  # ... fifty lose a tenth: 10 net wins, below a sign test's 2.25 * sqrt(110)
    assert clearly_better(a, b, z=2.25)
    assert not clearly_better(b, a, z=2.25)


def test_the_hybrid_weights_are_searched_through_fuse_and_ties_go_to_the_backbone():
    # user 1: pointwise puts the relevant item (index 2) first; user 2: the backbone already does
    users = [
        (3, {"pointwise": np.array([1.0, 2.0, 5.0])}, 2),
        (3, {"pointwise": np.array([1.0, 2.0, 3.0])}, 0),
    ]
    grid = {"pointwise": (0.0, 1.0), BACKBONE: (0.0, 1.0)}
    # summed NDCG@1: backbone alone 0 + 1; pointwise alone 1 + 0; both (user 1: [0, .25, 1] + [1, .5, 0],
    # item 0 first by backbone order on the tie) 0 + 1. A three-way tie: the backbone's weight decides
    best = select_hybrid_weights(users, k=1, grid=grid)
    assert best == {"pointwise": 0.0, BACKBONE: 1.0}
    assert fuse(3, users[0][1], weights=best).order == [0, 1, 2]
    strong = [(3, {"pointwise": np.array([1.0, 2.0, 5.0])}, 2)] * 3 + users[1:]
    assert select_hybrid_weights(strong, k=1, grid=grid) == {"pointwise": 1.0, BACKBONE: 0.0}
