"""The serving policy: the rule that picks what /rerank serves, its file, and the scorers whose
features it serves with (the same numbers offline and online)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.backbones.scorers import BackboneScorerError, EmbeddingScorer, SequenceScorer, load_scorer
from service.ranking.policy import PolicyError, ServingPolicy, choose_method, policy_dir

RNG = np.random.default_rng(7)
NOISE = RNG.choice([0.0, 0.0, 0.0, 0.5, 1.0], size=400)  # per-user NDCG@3 of a method that knows little


def test_the_backbone_order_stays_unless_a_dearer_method_is_clearly_better():
    same = NOISE.copy()
    slightly = NOISE + RNG.normal(0, 0.3, NOISE.size) * (RNG.random(NOISE.size) < 0.05)  # noise around the backbone
    method, why = choose_method({"backbone": NOISE, "rank_mean_no_llm": same, "learned_no_llm": slightly})
    assert method == "backbone"
    assert why[0].startswith("rank_mean_no_llm vs backbone: +0.0000") and "not clearly better" in why[0]


def test_a_dearer_method_must_beat_the_current_choice_not_just_the_backbone():
    better = NOISE + 0.1 * (RNG.random(NOISE.size) < 0.5)  # clearly better than the backbone
    hybrid = NOISE + 0.05 * (RNG.random(NOISE.size) < 0.5)  # better than the backbone, worse than `better`
    method, _ = choose_method({"backbone": NOISE, "learned_no_llm": better, "hybrid": hybrid})
    assert method == "learned_no_llm"
    method, _ = choose_method({"backbone": NOISE, "hybrid": hybrid})
    assert method == "hybrid"
    method, _ = choose_method({"backbone": NOISE, "learned_no_llm": better, "hybrid": better + 0.2})
    assert method == "hybrid"


def test_the_policy_file_says_what_the_default_request_needs_and_round_trips(tmp_path: Path):
    folder = policy_dir(tmp_path, "lightgcn")
    for method, tasks in (("learned_no_llm", ()), ("backbone", ()), ("hybrid", ("pointwise", "pairwise", "listwise"))):
        fitted = {"learned_no_llm": "learned_no_llm.lgb"} if method == "learned_no_llm" else {}
        policy = ServingPolicy(method=method, backbone="lightgcn", m=10, dataset="ml-100k", data_fingerprint="f", feature_backbones=("mf", "lightgcn"),
                               fitted_models=fitted, reasons=("why",))
        for name in fitted.values():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("tree\n")
        path = policy.save(folder)
        assert json.loads(path.read_text())["tasks"] == list(tasks)
        assert ServingPolicy.load(folder) == policy and policy.tasks == tasks and policy.needs_llm == bool(tasks)


def test_a_broken_policy_file_is_an_error_naming_it(tmp_path: Path):
    (tmp_path / "policy.json").write_text('{"format_version": 99}')
    with pytest.raises(PolicyError, match=r"policy.json: policy format 99, this release reads 1"):
        ServingPolicy.load(tmp_path)
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(PolicyError, match="unreadable serving policy"):
        ServingPolicy.load(tmp_path)
    with pytest.raises(ValueError, match="is none of"):
        ServingPolicy(method="magic", backbone="b", m=1, dataset="d", data_fingerprint=None)


def _sasrec(tmp_path: Path, n_users: int = 5, n_items: int = 30):
    from training.backbones.sasrec import SASRec

    model = SASRec(n_users, n_items, SASRec.Config(max_len=8, dim=16, layers=1, heads=2), device=None)
    for p in model.module.parameters():  # an untrained but not degenerate encoder
        p.data.normal_(0, 0.3)
    model.module.eval()
    model.save(tmp_path / "sasrec")
    return model


def test_the_served_sasrec_scores_are_the_trained_modules_on_the_users_live_history(tmp_path: Path):
    model = _sasrec(tmp_path)
    item_ids = [f"i{i}" for i in range(30)]
    scorer = load_scorer(tmp_path / "sasrec", [f"u{u}" for u in range(5)], item_ids)
    assert isinstance(scorer, SequenceScorer)
    history = np.array([3, 7, 1, 12, 9, 4, 0, 22, 17, 5])  # longer than max_len: the newest 8 count
    expected = model.score(np.array([0]), [history])[0]
    got = scorer.scores("u0", [item_ids[i] for i in history], item_ids)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    shorter = scorer.scores("u0", [item_ids[i] for i in history[:-1]], item_ids)
    assert not np.allclose(shorter, got)  # a new like moves every score
    assert np.isnan(scorer.scores("u0", ["i1"], ["i2", "unknown"])[1])


def test_the_embedding_scorer_is_the_dot_product_and_nan_where_it_cannot_score():
    users, items = np.eye(2, dtype=np.float32), np.array([[1, 0], [0, 2], [3, 3]], dtype=np.float32)
    scorer = EmbeddingScorer("mf", users, items, {"a": 0, "b": 1}, {"x": 0, "y": 1, "z": 2})
    assert scorer.scores("b", [], ["y", "x", "z"]).tolist() == [2.0, 0.0, 3.0]
    assert np.isnan(scorer.scores("b", [], ["nope"])).all() and np.isnan(scorer.scores("stranger", [], ["x"])).all()


def test_a_backbone_folder_that_does_not_match_the_serving_tables_is_refused(tmp_path: Path):
    _sasrec(tmp_path, n_items=30)
    with pytest.raises(BackboneScorerError, match="fitted on 30 items, the serving tables hold 31"):
        load_scorer(tmp_path / "sasrec", ["u0"], [f"i{i}" for i in range(31)])
    with pytest.raises(BackboneScorerError, match="no readable backbone config"):
        load_scorer(tmp_path / "missing", ["u0"], ["i0"])


def test_the_scorer_kind_comes_from_the_export_not_from_a_list_of_names(tmp_path: Path):
    import json

    from training.backbones.sasrec_lm import SASRecLM

    SASRecLM(5, 30, SASRecLM.Config(max_len=8, dim=16, layers=1, heads=2), device=None).save(tmp_path / "lm")
    meta = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert (meta["backbone"], meta["scorer"]) == ("sasrec_lm", "causal_sequence")  # inherited from SASRec
    assert isinstance(load_scorer(tmp_path / "lm", ["u0"], [f"i{i}" for i in range(30)]), SequenceScorer)
    # an export from before config.json named its scorer: known by its name
    _sasrec(tmp_path)
    legacy = json.loads((tmp_path / "sasrec" / "config.json").read_text())
    del legacy["scorer"]
    (tmp_path / "sasrec" / "config.json").write_text(json.dumps(legacy))
    assert isinstance(load_scorer(tmp_path / "sasrec", ["u0"], [f"i{i}" for i in range(30)]), SequenceScorer)
