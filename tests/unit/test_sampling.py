"""Adaptive user sampling: each strategy has the distribution PAPER.md describes."""

from __future__ import annotations

import numpy as np
import pytest

from training.tuning.sampling import clustering_draws, repetition_penalty_draws, sample_users

USERS = np.arange(400)


@pytest.fixture
def liked_counts():
    # a quarter of the users are very active
    return np.where(USERS < 100, 300, 5)


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], dtype=float)
    sizes = [200, 100, 60, 40]  # clusters of unequal size
    return np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centers, sizes)])


def test_same_seed_gives_the_same_draws(liked_counts, embeddings):
    a = sample_users("adaptive", 1000, USERS, liked_counts, embeddings, k=4, seed=7)
    b = sample_users("adaptive", 1000, USERS, liked_counts, embeddings, k=4, seed=7)
    c = sample_users("adaptive", 1000, USERS, liked_counts, embeddings, k=4, seed=8)
    assert np.array_equal(a.draws, b.draws) and not np.array_equal(a.draws, c.draws)


def test_importance_favours_active_users(liked_counts):
    uniform = sample_users("uniform", 4000, USERS, liked_counts, seed=1)
    importance = sample_users("importance", 4000, USERS, liked_counts, seed=1)
    share = lambda r: np.mean(r.draws < 100)  # noqa: E731
    # weights log(301) vs log(6): expected share 100*5.71 / (100*5.71 + 300*1.79) = 0.515
    assert share(uniform) == pytest.approx(0.25, abs=0.03)
    assert share(importance) == pytest.approx(0.515, abs=0.03)


def test_clusters_are_represented_in_proportion_to_their_size(liked_counts, embeddings):
    report = sample_users("clustering", 4000, USERS, liked_counts, embeddings, k=4, seed=3)
    counts = report.cluster_counts()
    sizes = np.bincount(report.cluster_of[USERS])
    for cluster, n in counts.items():
        assert n == pytest.approx(4000 * sizes[cluster] / 400, abs=1)  # largest-remainder quota
    assert sorted(sizes.tolist()) == [40, 60, 100, 200]


def test_cluster_quotas_add_up_exactly():
    labels = np.array([0] * 3 + [1] * 3 + [2] * 1)
    draws = clustering_draws(labels, 10, np.random.default_rng(0), np.arange(7))
    assert len(draws) == 10


def test_repetition_penalty_lowers_repeats():
    rng = np.random.default_rng(0)
    merged = np.concatenate([np.zeros(50, dtype=int), np.arange(1, 151)])  # user 0 in a third of the list
    picks = [np.sum(repetition_penalty_draws(merged, 100, np.random.default_rng(s)) == 0) for s in range(30)]
    naive = [np.sum(rng.choice(merged, size=100, replace=False) == 0) for _ in range(30)]
    # weight 0.95^49 = 0.08 per entry of user 0 vs 1.0 for the others
    assert np.mean(picks) < 0.25 * np.mean(naive)


def test_adaptive_draws_n_users_and_reports_clusters(liked_counts, embeddings):
    report = sample_users("adaptive", 500, USERS, liked_counts, embeddings, k=4, seed=0)
    assert len(report.draws) == 500 and set(report.draws.tolist()) <= set(USERS.tolist())
    assert "distinct users" in report.describe() and "draws per cluster" in report.describe()
    assert sum(report.cluster_counts().values()) == 500


def test_unknown_method_is_rejected(liked_counts):
    with pytest.raises(ValueError, match="unknown sampling method"):
        sample_users("random-walk", 10, USERS, liked_counts)
