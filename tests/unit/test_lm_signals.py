"""The LM signals' features and their controls, on examples small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.ranking.text_signals import ItemItemScorer, TextSpace
from training.backbones.sasrec_lm import INIT_STD, SASRecLM, reduced_init
from training.evaluation.lm_signals import ease_weights, permuted, scaled_prior, text_similarity

# Four items on the axes of a plane: their mean is zero, so centring leaves them as they are.
AXES = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
IDS = ["a", "b", "c", "d"]


def test_similarity_features_are_cosines_to_the_likes_centroid_and_the_closest_recent_like():
    space = TextSpace.from_embeddings("lm", AXES, IDS)
    f = space.features(["a", "c"], ["b", "d", "c"])
    half = 1 / math.sqrt(2)
    np.testing.assert_allclose(f["lm_centroid_cos"], [-half, -half, half])
    np.testing.assert_allclose(f["lm_recent_max_cos"], [0.0, 0.0, 1.0])


def test_similarity_features_centre_the_embeddings_first():
    # The same four items shifted by a common vector (what mean-pooled LM states look like) give the same features.
    shifted = TextSpace.from_embeddings("lm", AXES + np.array([5.0, 7.0]), IDS)
    plain = TextSpace.from_embeddings("lm", AXES, IDS)
    for name, values in plain.features(["a"], ["b", "c"]).items():
        np.testing.assert_allclose(shifted.features(["a"], ["b", "c"])[name], values)


def test_similarity_features_are_nan_for_unknown_candidates_and_for_a_user_without_known_likes():
    space = TextSpace.from_embeddings("lm", AXES, IDS)
    f = space.features(["a"], ["zz", "b"])
    assert math.isnan(f["lm_centroid_cos"][0]) and f["lm_centroid_cos"][1] == pytest.approx(-1.0)
    assert np.isnan(space.features(["unknown"], ["a", "b"])["lm_recent_max_cos"]).all()


def test_item_item_scores_sum_the_weights_from_each_distinct_liked_item():
    w = np.array([[0, 1, 2], [3, 0, 4], [5, 6, 0]], dtype=np.float32)
    scorer = ItemItemScorer("ease", w, {"x": 0, "y": 1, "z": 2})
    np.testing.assert_allclose(scorer.scores(["x", "y", "x", "nope"], ["z", "y"]), [2 + 4, 1])
    assert list(scorer.scores([], ["z", "y"])) == [0.0, 0.0]
    f = scorer.features(["x"], ["y", "z", "unknown"])
    assert list(f["ease_rank"]) == [1.0, 0.0, 2.0] and math.isnan(f["ease_score"][2])


def test_plain_ease_is_the_closed_form_with_a_zero_diagonal():
    rng = np.random.default_rng(0)
    x = (rng.random((40, 6)) < 0.4).astype(float)
    b = ease_weights(x, lam=3.0)
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(6))
    expected = np.eye(6) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(b, expected, atol=1e-5)
    assert np.all(np.diag(b) == 0)


def test_text_regularised_ease_meets_its_optimality_condition_and_tends_to_the_prior():
    rng = np.random.default_rng(1)
    x = (rng.random((30, 5)) < 0.5).astype(float)
    prior = rng.random((5, 5))
    np.fill_diagonal(prior, 0)
    lam = 2.0
    b = ease_weights(x, lam, prior).astype(float)
    # Stationarity with only the diagonal constrained: (X'X + lam I) B - X'X - lam prior is diagonal.
    residual = (x.T @ x + lam * np.eye(5)) @ b - x.T @ x - lam * prior
    np.testing.assert_allclose(residual - np.diag(np.diag(residual)), 0, atol=1e-4)
    np.testing.assert_allclose(ease_weights(x, 1e7, prior), prior, atol=1e-4)


def test_text_similarity_keeps_each_rows_nearest_neighbours_and_no_self_similarity():
    sim = text_similarity(AXES, neighbours=1)
    # a's nearest other item is c or d (cosine 0; b is -1): one value kept per row, the diagonal zero.
    assert (np.count_nonzero(sim, axis=1) <= 1).all() and np.all(np.diag(sim) == 0)
    vectors = np.array([[1.0, 0.1], [0.9, 0.2], [-1.0, 0.0], [0.0, 1.0]])
    sim = text_similarity(vectors, neighbours=1)
    assert sim[0, 1] > 0 and sim[0, 2] == 0 and sim[0, 3] == 0


def test_the_prior_is_scaled_to_the_reference_norm():
    s = np.array([[0.0, 3.0], [4.0, 0.0]])
    ref = np.array([[0.0, 10.0], [0.0, 0.0]])
    assert np.linalg.norm(scaled_prior(s, ref)) == pytest.approx(10.0)


def test_a_control_permutes_rows_so_every_vector_survives_on_another_item():
    v = np.arange(20, dtype=float).reshape(10, 2)
    shuffled = permuted(v)
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, v)) and not np.array_equal(shuffled, v)


def test_lm_initialisation_is_a_scaled_pca_and_its_control_the_same_rows_on_other_items(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(30, 12)) + 4.0
    init = reduced_init(emb, 4, None)
    assert init.shape == (30, 4) and init.std() == pytest.approx(INIT_STD, rel=1e-4)
    np.testing.assert_allclose(init.mean(axis=0), 0, atol=1e-6)
    ctrl = reduced_init(emb, 4, 7)
    np.testing.assert_allclose(np.sort(ctrl, axis=0), np.sort(init, axis=0), atol=1e-7)
    assert not np.allclose(ctrl, init)
    path = tmp_path / "emb.npy"
    np.save(path, emb)
    model = SASRecLM(5, 30, SASRecLM.Config(dim=4, heads=1, layers=1, item_init=str(path)), device=None)
    np.testing.assert_allclose(model.module.item_table(30).detach().numpy(), init, atol=1e-7)


def test_an_items_text_is_its_title_year_and_genres_and_omits_what_it_lacks():
    from training.data.types import Item
    from training.evaluation.lm_embeddings import item_text

    assert item_text(Item("1", "Toy Story", ("Animation", "Comedy"), 1995)) == "Toy Story (1995): Animation, Comedy"
    assert item_text(Item("2", "A Book")) == "A Book"
