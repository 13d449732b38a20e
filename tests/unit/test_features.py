"""The learned fusion's non-LLM features: what each column holds, and that the gateway and
evaluation build them with the same code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.gateway.reranker import load_learned_fusions, non_llm_inputs
from service.ranking.features import RECENT_LIKES, CandidateContext, non_llm_features, rank_among
from service.ranking.fusion import feature_matrix, fusion_model_path
from training.fusion_selection import LearnedFusionConfig, UserGroup, fit_learned_fusion


def test_genre_overlap_counts_per_liked_item_and_popularity_is_logged():
    feats = non_llm_features(CandidateContext([("Drama",), ("Drama", "War")], [("Drama",), ("War", "Drama"), ("Comedy",)], [0, 9, 99]))
    assert feats["genre_overlap"].tolist() == [1.0, 1.5, 0.0]
    assert np.allclose(feats["log_popularity"], np.log1p([0, 9, 99]))


def test_recent_genre_overlap_reads_only_the_latest_likes():
    liked = [("Comedy",)] * 10 + [("Horror",)] * RECENT_LIKES
    feats = non_llm_features(CandidateContext(liked, [("Comedy",), ("Horror",)], [1, 1]))
    assert feats["recent_genre_overlap"].tolist() == [0.0, 1.0]
    assert feats["genre_overlap"][0] > feats["genre_overlap"][1]


def test_every_backbone_gives_its_score_and_its_rank_among_the_candidates():
    feats = non_llm_features(CandidateContext([], [(), (), ()], [0, 0, 0], {"sasrec": [0.1, 0.9, 0.5], "mf": [3.0, 2.0, 1.0]}))
    assert [n for n in feats if n.endswith(("_score", "_rank"))] == ["mf_score", "mf_rank", "sasrec_score", "sasrec_rank"]
    assert feats["sasrec_rank"].tolist() == [2.0, 0.0, 1.0]
    assert feats["mf_rank"].tolist() == [0.0, 1.0, 2.0]
    assert rank_among([np.nan, 1.0]).tolist() == [1.0, 0.0]


def _fitted(names_of_backbones: list[str], path: Path) -> Path:
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(60):
        ctx = CandidateContext([("Drama",)], [("Drama",)] * 5, rng.integers(0, 50, 5), {b: rng.normal(size=5) for b in names_of_backbones})
        feats = feature_matrix(5, backbone_scores=rng.normal(size=5), extra=non_llm_features(ctx))
        groups.append(UserGroup.with_relevant(feats, int(rng.integers(5))))
    fit_learned_fusion(groups, LearnedFusionConfig(guard=False, min_child_samples=5)).save(path)
    return path


def test_the_gateway_loads_a_fusion_fitted_on_the_features_it_builds(tmp_path: Path):
    folder = tmp_path / "fusion"
    folder.mkdir()
    _fitted(["lightgcn"], fusion_model_path(folder, "lightgcn", 10))
    loaded = load_learned_fusions(tmp_path, "lightgcn")
    assert list(loaded) == [10]
    ctx = CandidateContext([("Drama",)], [("Drama",)] * 5, [1, 2, 3, 4, 5])
    scores, extra = non_llm_inputs(5, "lightgcn", [0.5, 0.4, 0.3, 0.2, 0.1], ctx)
    feats = feature_matrix(5, backbone_scores=scores, extra=extra)
    assert feats.names == loaded[10].feature_names_
    assert np.isfinite(loaded[10].predict(feats)).all()


def test_the_gateway_skips_a_fusion_that_needs_backbones_it_does_not_run(tmp_path: Path):
    folder = tmp_path / "fusion"
    folder.mkdir()
    _fitted(["lightgcn", "mf", "sasrec"], fusion_model_path(folder, "lightgcn", 10))
    assert load_learned_fusions(tmp_path, "lightgcn") == {}
