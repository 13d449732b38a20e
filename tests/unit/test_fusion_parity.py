"""Evaluation through the one fusion gives the numbers the code before it gave, on the same inputs.

`fixtures/fusion_parity.json` was written by the code of commit 9c6e013 (fusion computed in the
engine, the gateway and training/evaluation/evaluate.py; fitting, cross-validation and the guard in
service/ranking/fusion.py) from `tests/fusion_parity.py`'s seeded inputs: 120 validation and 60
test users, m = 10, with dropped tasks, constant answers and held-out items outside the list.
`fixtures/fusion-format2/` holds a learned fusion that code saved, and its predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.ranking.fusion import LearnedFusion, fuse, fusion_model_path
from tests.fusion_parity import M, inputs, matrix_inputs
from training.evaluation import evaluate as ev
from training.evaluation import serving_policy as sp
from training.evaluation.fusion_selection import select_hybrid_weights

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads((FIXTURES / "fusion_parity.json").read_text())


@pytest.fixture(scope="module")
def now(before):
    split, valid, test, popularity, scores = inputs()
    x_valid = [matrix_inputs(split, r, popularity, scores["valid"]) for r in valid]
    fit = sp.fit_policy(split, valid, x_valid, "lightgcn", seed=before["seed"], feature_backbones=tuple(scores["valid"]), model_run_key=None, data_fingerprint=None)
    fitted, cv = fit.models, fit.cv
    tuned = select_hybrid_weights([(r.m, ev.utilities_of(r), ev.relevant_index(r)) for r in valid], k=3)
    orders: dict[str, list[list[int]]] = {}
    for rec in test:
        x = matrix_inputs(split, rec, popularity, scores["test"])
        per_method = ev.method_orders(rec) | {m: sp.method_order(m, rec, x, fitted) for m in ("rank_mean_no_llm", "learned_no_llm", "learned")}
        per_method["hybrid_tuned"] = fuse(rec.m, ev.utilities_of(rec), weights=tuned).order
        for method, order in per_method.items():
            orders.setdefault(method, []).append(order)
    valid_ranks = {method: [ev.target_rank((ev.method_orders(r) | {"rank_mean_no_llm": sp.method_order("rank_mean_no_llm", r, x, fitted)})[method], r)
                            for r, x in zip(valid, x_valid, strict=True)] for method in ev.UNFITTED}
    ranks = {method: [ev.target_rank(o, r) for o, r in zip(per_user, test, strict=True)] for method, per_user in orders.items()}
    return {"split": split, "test": test, "popularity": popularity, "scores": scores, "fitted": fitted, "cv": cv, "tuned": tuned,
            "orders": orders, "ranks": ranks, "valid_ranks": valid_ranks}


def test_every_methods_order_on_the_test_users_is_the_one_before(before, now):
    assert set(now["orders"]) == set(before["orders"]) == set(ev.METHODS)
    for method in ev.METHODS:
        assert now["orders"][method] == before["orders"][method], method
    assert now["ranks"] == before["ranks"]
    assert now["valid_ranks"] == before["validation_ranks"]


def test_the_fitted_choices_are_the_ones_before(before, now):
    assert now["tuned"] == before["hybrid_tuned_weights"]
    assert now["cv"]["learned"]["uses_llm_features"] is before["uses_llm"] is True  # the LLM features are exercised
    assert {k: m.fallback_ for k, m in now["fitted"].items()} == before["fallback"]
    assert now["cv"]["learned"]["beats_shuffled_control"] is True  # added since: the control the features are also judged against
    for name, cv in before["cv"].items():
        assert now["cv"][name].keys() - {"beats_shuffled_control"} == cv.keys()
        for key, value in cv.items():
            if key == "per_fold":
                assert [f.keys() for f in now["cv"][name][key]] == [f.keys() for f in value]
                for got, old in zip(now["cv"][name][key], value, strict=True):
                    assert list(got.values()) == pytest.approx(list(old.values()), rel=1e-12), (name, key)
            elif isinstance(value, float):
                assert now["cv"][name][key] == pytest.approx(value, rel=1e-12), (name, key)
            else:
                assert now["cv"][name][key] == value, (name, key)


def test_the_fused_scores_are_the_ones_before(before, now):
    split, test, popularity, scores = now["split"], now["test"], now["popularity"], now["scores"]["test"]
    for rec, hybrid, learned in zip(test, before["hybrid_scores"], before["learned_scores"], strict=True):
        util = ev.utilities_of(rec)
        if hybrid is not None:
            assert fuse(M, util).scores.tolist() == hybrid  # bit for bit
        x = matrix_inputs(split, rec, popularity, scores)
        got = fuse(M, util, learned=now["fitted"]["learned"], backbone_scores=x.backbone_scores, extra=x.extra).scores
        np.testing.assert_allclose(got, learned, rtol=1e-12)


def test_the_paired_rows_keep_their_numbers_and_carry_the_old_bootstrap_intervals(before, now):
    arrays = {k: np.asarray(v) for k, v in now["ranks"].items()}
    rows = ev.paired_rows(arrays, M, 200, before["seed"])
    by_key = {(r["method"], r["metric"], r["vs"]): r for r in rows}
    for old in before["paired"]:  # the k = 3 rows the report had
        row = by_key[(old["method"], old["metric"], old["vs"])]
        assert row.keys() == old.keys()
        numbers = [k for k, v in old.items() if isinstance(v, float)]
        assert [row[k] for k in numbers] == pytest.approx([old[k] for k in numbers], rel=1e-12, nan_ok=True), old
    for old in before["bootstrap"]:  # the former "bootstrap" key: every k, against the backbone
        row = by_key[(old["method"], old["metric"], "backbone")]
        assert (row["diff"], row["ci_low"], row["ci_high"]) == pytest.approx((old["diff"], old["low"], old["high"]), rel=1e-12), old


def test_a_learned_fusion_saved_before_loads_and_predicts_as_before():
    folder = FIXTURES / "fusion-format2"
    expected = json.loads((folder / "predictions.json").read_text())
    model = LearnedFusion.load(fusion_model_path(folder / "fusion", "lightgcn", 5))
    assert model.fallback_ == expected["fallback"]
    assert model.feature_names_ == tuple(expected["names"])
    assert model.fit_details_["guard_report"]["folds"] == 3  # the fit's record came along
    from service.ranking.fusion import FusionFeatures

    for rows, scores, model_scores in zip(expected["rows"], expected["scores"], expected["model_scores"], strict=True):
        features = FusionFeatures(np.asarray(rows), tuple(expected["names"]))
        np.testing.assert_allclose(model.predict(features), scores, rtol=1e-12)
        np.testing.assert_allclose(model.model_scores(features), model_scores, rtol=1e-12)
