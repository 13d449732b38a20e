"""The one fusion (`fuse`): the hybrid, the learned fusion as serving loads and applies it, the
scaling rule, and the feature matrix. Formulas are pinned on small cases computed by hand; fitting
and selection are tests/unit/test_fusion_selection.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.ranking.fusion import (
    BACKBONE,
    BACKBONE_RANK,
    DEFAULT_WEIGHTS,
    FusionModelError,
    LearnedFusion,
    feature_matrix,
    fuse,
    hybrid_scores,
    minmax_normalise,
    prior_scores_of,
    rank_by,
)
from service.ranking.utilities import listwise_utility
from training.evaluation.fusion_selection import LearnedFusionConfig, UserGroup, fit_learned_fusion

# -- the scaling rule --------------------------------------------------------------------------------


def test_minmax_normalise_maps_to_unit_interval_and_a_constant_to_zero():
    assert minmax_normalise(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax_normalise(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
    assert minmax_normalise(np.array([1.0, np.nan, 5.0])).tolist() == [0.0, 0.0, 1.0]
    assert minmax_normalise(np.array([-np.inf, 2.0, 4.0])).tolist() == [0.0, 0.0, 1.0]


def test_a_constant_task_adds_to_the_hybrid_what_a_task_that_did_not_answer_adds():
    point = np.array([4.0, 2.0, 5.0])
    alone = hybrid_scores({"pointwise": point})
    with_constant = hybrid_scores({"pointwise": point, "pairwise": np.full(3, 0.5)})
    assert with_constant.tolist() == alone.tolist()


# -- the hybrid --------------------------------------------------------------------------------------


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


def test_a_backbone_weight_adds_a_prior_for_the_backbone_order():
    # m = 3: backbone prior norm(3, 2, 1) = 1, 0.5, 0; pointwise norm(1, 3, 2) = 0, 1, 0.5
    u = hybrid_scores({"pointwise": np.array([1.0, 3.0, 2.0])}, {"pointwise": 1.0, BACKBONE: 2.0})
    assert u.tolist() == pytest.approx([2.0, 2.0, 0.5])
    assert rank_by(u) == [0, 1, 2]
    with pytest.raises(ValueError):  # the prior is a weight, never a utility
        hybrid_scores({BACKBONE: np.array([3.0, 2.0, 1.0])}, {BACKBONE: 1.0})


def test_rank_by_breaks_ties_by_backbone_order():
    assert rank_by(np.array([0.5, 0.9, 0.5, 0.9, np.nan])) == [1, 3, 0, 2, 4]
    # all-constant utilities -> hybrid all 0 -> backbone order
    assert rank_by(hybrid_scores({"pairwise": np.full(4, 0.5)})) == [0, 1, 2, 3]


# -- fuse: the one fusion ----------------------------------------------------------------------------


def test_fuse_ranks_by_the_hybrid_of_the_tasks_that_answered():
    point, lst = np.array([4.0, 2.0, 5.0, 3.0]), np.array([0.0, 4.0, 3.0, 0.0])
    fused = fuse(4, {"pointwise": point, "listwise": lst})
    assert fused.method == "hybrid"
    # norm(point) = 2/3, 0, 1, 1/3; norm(lst) = 0, 1, 0.75, 0; weights 1/3 each
    assert fused.scores.tolist() == pytest.approx([2 / 9, 1 / 3, 1.75 / 3, 1 / 9])
    assert fused.order == [2, 1, 0, 3]


def test_fuse_with_no_task_is_the_backbone_order_with_graded_relevance():
    fused = fuse(4, {})
    assert fused.method == "backbone" and fused.order == [0, 1, 2, 3]
    assert fused.relevance.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_relevance_is_the_fused_score_scaled_to_the_unit_interval_within_the_list():
    fused = fuse(3, {"pointwise": np.array([2.0, 5.0, 3.0])}, weights={"pointwise": 1.0, "pairwise": 1.0, "listwise": 1.0})
    assert fused.order == [1, 2, 0]
    assert fused.relevance.tolist() == pytest.approx([0.0, 1.0, 1 / 3])


def test_when_nothing_tells_the_candidates_apart_every_relevance_is_zero_and_the_order_is_the_backbones():
    fused = fuse(3, {"pairwise": np.full(3, 0.5), "listwise": np.zeros(3)})
    assert fused.order == [0, 1, 2]
    assert fused.relevance.tolist() == [0.0, 0.0, 0.0]
    assert fuse(1, {"pointwise": np.array([4.2])}).relevance.tolist() == [0.0]


def test_a_non_finite_fused_score_ranks_last_with_relevance_zero():
    class Broken(LearnedFusion):
        def __init__(self):
            pass

        def predict(self, features):
            return np.array([0.2, np.nan, 0.9, np.inf])

    fused = fuse(4, {}, learned=Broken())
    assert fused.order == [2, 0, 1, 3]
    assert fused.scores.tolist() == [0.2, -np.inf, 0.9, -np.inf]
    assert fused.relevance.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])


def test_fuse_rejects_a_utility_of_the_wrong_length():
    with pytest.raises(ValueError):
        fuse(3, {"pointwise": np.ones(4)})


# -- features ----------------------------------------------------------------------------------------


def test_feature_matrix_records_columns_in_order_with_nan_for_tasks_not_run():
    f = feature_matrix(
        3,
        {"pointwise": np.array([4.0, 3.0, 5.0]), "listwise": np.array([2.0, 3.0, 0.0])},
        backbone_scores=np.array([0.9, 0.8, 0.1]),
        extra={"popularity": np.array([10.0, 20.0, 30.0]), "genre_overlap": np.array([0.1, 0.2, 0.3])},
    )
    assert f.names == ("pointwise", "pairwise", "listwise", "backbone_score", "backbone_rank", "popularity", "genre_overlap")
    assert f.values.shape == (3, 7)
    assert np.isnan(f.column("pairwise")).all()
    assert f.column(BACKBONE_RANK).tolist() == [0.0, 1.0, 2.0]
    assert f.column("popularity").tolist() == [10.0, 20.0, 30.0]


def test_feature_matrix_rejects_a_wrong_length_a_clashing_name_or_an_unknown_task():
    with pytest.raises(ValueError):
        feature_matrix(3, {"pointwise": np.array([1.0, 2.0])})
    with pytest.raises(ValueError):
        feature_matrix(2, extra={"backbone_rank": np.array([1.0, 2.0])})
    with pytest.raises(ValueError):
        feature_matrix(2, {"ratings": np.array([1.0, 2.0])})


def test_the_trees_start_from_the_hybrid_ranking_as_evenly_spaced_scores():
    # norm(point) = 0, 1, 0.25, 0.75, 0.5, 0.375; listwise [4, 2, 0] -> 4, 0, 5, 0, 6, 0 -> norm 2/3, 0, 5/6, 0, 1, 0;
    # summed: 0.667, 1, 1.083, 0.75, 1.5, 0.375, so the hybrid ranks 4, 2, 1, 3, 0, 5
    features = feature_matrix(6, {"pointwise": np.array([1.0, 5.0, 2.0, 4.0, 3.0, 2.5]), "listwise": listwise_utility(6, [4, 2, 0])})
    prior = prior_scores_of(features, DEFAULT_WEIGHTS, 2.0)
    assert prior.tolist() == pytest.approx([0.4, 1.2, 1.6, 0.8, 2.0, 0.0])  # 2.0 for the first, then steps of 2.0 / 5
    without_tasks = feature_matrix(6, backbone_scores=np.linspace(1, 0, 6))
    assert prior_scores_of(without_tasks, DEFAULT_WEIGHTS, 1.0).tolist() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])  # backbone order


# -- the learned fusion as serving loads it ------------------------------------------------------------


def _groups(n_users: int, m: int, seed: int) -> list[UserGroup]:
    """The pointwise utility is 5 for the relevant item and uniform in [1, 4] otherwise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        relevant = int(rng.integers(m))
        point = rng.uniform(1.0, 4.0, m)
        point[relevant] = 5.0
        features = feature_matrix(m, {"pointwise": point, "listwise": listwise_utility(m, list(rng.permutation(m)[:3]))},
                                  backbone_scores=np.sort(rng.uniform(0, 1, m))[::-1])
        out.append(UserGroup.with_relevant(features, relevant))
    return out


@pytest.fixture(scope="module")
def fitted() -> tuple[LearnedFusion, list[UserGroup]]:
    groups = _groups(60, 6, seed=4)
    return fit_learned_fusion(groups, LearnedFusionConfig(n_estimators=20, learning_rate=0.1, guard=False)), groups


class PointwiseMinusRank(LearnedFusion):
    """A learned fusion whose prediction is pointwise - backbone_rank, so the expected answer can be
    worked out by hand; it keeps the features it was given."""

    def __init__(self):
        self.seen = []

    def predict(self, features):
        self.seen.append(features)
        return features.column("pointwise") - features.column(BACKBONE_RANK)


def test_fuse_with_a_learned_fusion_serves_its_prediction_on_the_tasks_and_non_llm_inputs():
    model = PointwiseMinusRank()
    point, lst = np.array([4.0, 2.0, 5.0, 3.0]), np.array([0.0, 4.0, 3.0, 0.0])
    fused = fuse(4, {"pointwise": point, "listwise": lst}, learned=model, backbone_scores=[0.9, 0.7, 0.4, 0.1], extra={"popularity": np.arange(4.0)})
    assert fused.method == "learned"
    assert fused.scores.tolist() == [4.0, 1.0, 3.0, 0.0]  # 4 - 0, 2 - 1, 5 - 2, 3 - 3
    assert fused.order == [0, 2, 1, 3]
    [features] = model.seen
    assert features.names == ("pointwise", "pairwise", "listwise", "backbone_score", "backbone_rank", "popularity")
    assert features.column("listwise").tolist() == [0.0, 4.0, 3.0, 0.0] and np.isnan(features.column("pairwise")).all()
    assert features.column("backbone_score").tolist() == [0.9, 0.7, 0.4, 0.1]


def test_a_learned_fusion_whose_fit_fell_back_serves_the_fallback(fitted):
    model, groups = fitted
    features = feature_matrix(4, {"pointwise": np.array([4.0, 2.0, 5.0, 3.0]), "listwise": np.array([0.0, 4.0, 3.0, 0.0])},
                              backbone_scores=np.array([0.9, 0.7, 0.4, 0.1]))
    as_hybrid = LearnedFusion(model.booster_, model.feature_names_, fallback="hybrid")
    as_backbone = LearnedFusion(model.booster_, model.feature_names_, fallback="backbone")
    assert as_hybrid.predict(features).tolist() == pytest.approx([2 / 9, 1 / 3, 1.75 / 3, 1 / 9])  # the hybrid, as in the case above
    assert as_backbone.predict(features).tolist() == [4.0, 3.0, 2.0, 1.0]  # m - backbone_rank
    assert rank_by(model.predict(groups[0].features)) != list(range(6))  # the trees themselves are still there


def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    model, groups = fitted
    path = tmp_path / "fusion.lgb"
    model.save(path)
    loaded = LearnedFusion.load(path)
    assert loaded.feature_names_ == model.feature_names_ and loaded.fallback_ == model.fallback_
    assert loaded.hybrid_weights == model.hybrid_weights and loaded.prior_scale == model.prior_scale
    assert loaded.fit_details_["config"]["n_estimators"] == 20
    for g in groups[:10]:
        np.testing.assert_array_equal(loaded.predict(g.features), model.predict(g.features))


def test_predict_rejects_features_in_a_different_order(fitted):
    model, _ = fitted
    with pytest.raises(ValueError):
        model.predict(feature_matrix(6, extra={"popularity": np.ones(6)}))


def test_a_model_this_release_cannot_read_fails_with_one_line_naming_the_file(fitted, tmp_path):
    model, _ = fitted
    path = tmp_path / "lightgcn-m10-learned.lgb"
    model.save(path)
    sidecar = tmp_path / "lightgcn-m10-learned.lgb.json"
    saved = json.loads(sidecar.read_text())
    cases = {
        "format 1": {**saved, "format_version": 1},
        "no prior settings": {**saved, "config": {}},
        "not json": "{",
    }
    for name, content in cases.items():
        sidecar.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(FusionModelError) as err:
            LearnedFusion.load(path)
        message = str(err.value)
        assert "\n" not in message and str(tmp_path) in message and "make eval" in message, name
    sidecar.write_text(json.dumps(saved))
    path.write_text("not a LightGBM model")
    with pytest.raises(FusionModelError, match="make eval"):
        LearnedFusion.load(path)
