"""The learned fusion's non-LLM features: what each column holds, and that the gateway and
evaluation build them with the same code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.backbones.feature_source import FeatureSource, LikedItem
from service.gateway.policy_runtime import PolicyLoadError, load_policy_runtime
from service.ranking.features import RECENT_LIKES, CandidateContext, non_llm_features, rank_among
from service.ranking.fusion import feature_matrix
from service.ranking.policy import ServingPolicy, policy_dir, write_popularity
from training.evaluation.fusion_selection import LearnedFusionConfig, UserGroup, fit_learned_fusion


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


def _backbone_folder(root: Path, name: str, n_users: int, n_items: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"backbone": name, "n_users": n_users, "n_items": n_items, "config": {}}))
    np.save(folder / "user_vectors.npy", rng.normal(size=(n_users, 4)).astype(np.float32))
    np.save(folder / "item_vectors.npy", rng.normal(size=(n_items, 4)).astype(np.float32))
    return folder


def _policy_folder(tmp_path: Path, fingerprint: str = "abc") -> tuple[Path, list[str], list[str]]:
    """A model folder whose policy serves a LambdaRank fitted on what `FeatureSource` builds."""
    users, items = [f"u{i}" for i in range(6)], [f"i{i}" for i in range(12)]
    for seed, name in enumerate(("lightgcn", "mf")):
        _backbone_folder(tmp_path / "backbones", name, len(users), len(items), seed)
    source = FeatureSource.from_artifacts({n: tmp_path / "backbones" / n for n in ("lightgcn", "mf")}, users, items, {"i1": 3.0})
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(60):
        cands = [str(c) for c in rng.choice(items, 5, replace=False)]
        x = source.inputs("lightgcn", str(rng.choice(users)), [LikedItem("i0", ("Drama",))], cands, [("Drama",)] * 5)
        groups.append(UserGroup.with_relevant(feature_matrix(5, backbone_scores=x.backbone_scores, extra=x.extra), int(rng.integers(5))))
    folder = policy_dir(tmp_path / "model", "lightgcn")
    folder.mkdir(parents=True)
    fit_learned_fusion(groups, LearnedFusionConfig(guard=False, min_child_samples=5)).save(folder / "learned_no_llm.lgb")
    write_popularity(folder, {"i1": 3.0})
    ServingPolicy(method="learned_no_llm", backbone="lightgcn", m=5, dataset="d", data_fingerprint=fingerprint, feature_backbones=("lightgcn", "mf"),
                  fitted_models={"learned_no_llm": "learned_no_llm.lgb"}).save(folder)
    return tmp_path, users, items


def test_the_gateway_loads_the_policy_and_serves_its_ranker_on_the_features_it_was_fitted_on(tmp_path: Path):
    root, users, items = _policy_folder(tmp_path)
    runtime = load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, items, "abc")
    assert runtime.policy.method == "learned_no_llm" and runtime.policy.tasks == () and sorted(runtime.features.scorers) == ["lightgcn", "mf"]
    x = runtime.inputs("u1", [LikedItem("i0", ("Drama",))], items[:5], [("Drama",)] * 5)
    feats = feature_matrix(5, backbone_scores=x.backbone_scores, extra=x.extra)
    assert feats.names == runtime.models["learned_no_llm"].feature_names_
    assert np.isfinite(runtime.models["learned_no_llm"].predict(feats)).all()
    assert x.extra["log_popularity"].tolist() == pytest.approx(np.log1p([0, 3, 0, 0, 0]).tolist())  # the exported table


def test_the_gateway_refuses_a_policy_fitted_on_other_data_or_missing_its_model(tmp_path: Path):
    root, users, items = _policy_folder(tmp_path, fingerprint="other")
    with pytest.raises(PolicyLoadError, match="fitted on data other"):
        load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, items, "abc")
    (policy_dir(root / "model", "lightgcn") / "learned_no_llm.lgb").unlink()
    with pytest.raises(PolicyLoadError, match="policy.json: its fitted model files are missing"):
        load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, items, "other")


def test_the_gateway_refuses_a_learned_policy_that_names_no_model_file(tmp_path: Path):
    root, users, items = _policy_folder(tmp_path)
    policy_file = policy_dir(root / "model", "lightgcn") / "policy.json"
    policy_file.write_text(json.dumps({**json.loads(policy_file.read_text()), "fitted_models": {}}))
    with pytest.raises(PolicyLoadError, match="policy.json: its fitted model files are missing"):
        load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, items, "abc")


def test_the_gateway_refuses_a_policy_whose_feature_backbone_was_not_exported_or_fits_another_catalogue(tmp_path: Path):
    root, users, items = _policy_folder(tmp_path)
    with pytest.raises(PolicyLoadError, match="vectors for 6 users / 12 items"):
        load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, [*items, "i12"], "abc")
    for file in (root / "backbones" / "mf").iterdir():
        file.unlink()
    with pytest.raises(PolicyLoadError, match="backbones/mf: no readable backbone config"):
        load_policy_runtime(policy_dir(root / "model", "lightgcn"), root / "backbones", users, items, "abc")


def test_a_model_without_a_policy_serves_the_hybrid_by_default(tmp_path: Path):
    assert load_policy_runtime(tmp_path / "model", tmp_path, [], [], "abc") is None
