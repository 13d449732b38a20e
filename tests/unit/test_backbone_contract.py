"""Every registered backbone honours the same contract, checked the same way (a conformance suite)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_dataset
from training.backbones import REGISTRY, get_backbone
from training.data.split import leave_one_out


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic_dataset())


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def trained(request, split):
    cls = get_backbone(request.param)
    model = cls(split.n_users, split.n_items, cls.Config(epochs=3, batch_size=64, eval_every=1), device=None)
    log = model.fit(split, progress=False)
    return model, log


def histories(split, users, stage="test"):
    return [split.history(u, stage) for u in users]


def test_fit_reports_its_epochs_and_a_validation_score(trained):
    model, log = trained
    assert 1 <= log.best_epoch <= log.epochs_run <= 3
    assert 0.0 <= log.best_valid_ndcg10 <= 1.0


def test_vectors_have_one_row_per_user_and_item_and_define_the_score(trained, split):
    model, _ = trained
    users = np.arange(split.n_users)
    uv = model.user_vectors(users, histories(split, users))
    iv = model.item_vectors()
    assert uv.dtype == np.float32 and iv.dtype == np.float32
    assert uv.shape[0] == split.n_users and iv.shape == (split.n_items, uv.shape[1])
    assert np.all(np.isfinite(uv)) and np.all(np.isfinite(iv))
    np.testing.assert_allclose(model.score(users, histories(split, users)), uv @ iv.T, rtol=1e-5, atol=1e-5)


def test_top_m_is_sorted_and_never_returns_a_masked_item(trained, split):
    model, _ = trained
    users = split.evaluated_users()
    exclude = [split.known_items(u, "test") for u in users]
    top = model.top_m(users, histories(split, users), exclude, m=10)
    scores = model.score(users, histories(split, users))
    assert top.shape == (len(users), 10)
    for row, known in enumerate(exclude):
        assert not set(top[row].tolist()) & set(known.tolist())
        assert len(set(top[row].tolist())) == 10
        assert np.all(np.diff(scores[row, top[row]]) <= 1e-6)


def test_empty_history_still_gets_a_vector(trained, split):
    model, _ = trained
    uv = model.user_vectors(np.array([0]), [np.array([], dtype=np.int32)])
    assert uv.shape[0] == 1 and np.all(np.isfinite(uv))


def test_saved_backbone_reloads_with_identical_scores(trained, split, tmp_path):
    model, _ = trained
    model.save(tmp_path)
    again = type(model).load(tmp_path)
    users = np.arange(split.n_users)
    np.testing.assert_allclose(again.score(users, histories(split, users)), model.score(users, histories(split, users)), rtol=1e-5, atol=1e-5)


def test_evaluation_metrics_are_probabilities(trained, split):
    model, _ = trained
    metrics = model.evaluate(split, "test")
    assert set(metrics) >= {"HR@10", "NDCG@10"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["NDCG@10"] <= metrics["HR@10"]
