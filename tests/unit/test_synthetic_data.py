"""The synthetic ML-1M look-alike (training/data/synthetic.py): its shape, its skew, and that it reads
back through the ML-1M loader and the normal split."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import leave_one_out, load_dataset
from training.data.synthetic import ML1M_ITEMS, synthetic_movielens, users_for, write_grouplens_1m


@pytest.fixture(scope="module")
def small():
    return synthetic_movielens(60_000, seed=3)


def test_same_seed_gives_the_same_data_and_another_seed_other_data(small):
    again = synthetic_movielens(60_000, seed=3)
    other = synthetic_movielens(60_000, seed=4)
    for field in ("user", "item", "rating", "timestamp"):
        assert np.array_equal(getattr(small.ratings, field), getattr(again.ratings, field))
    assert not np.array_equal(small.ratings.item, other.ratings.item)


def test_it_has_exactly_the_requested_ratings_and_ml1m_users_per_rating(small):
    assert len(small.ratings) == 60_000
    assert small.n_users == users_for(60_000) == 362
    assert small.n_items == ML1M_ITEMS
    assert users_for(1_000_000) == 6040


def test_every_user_rates_at_least_twenty_distinct_items_with_a_long_tail(small):
    r = small.ratings
    per_user = np.bincount(r.user, minlength=small.n_users)
    assert per_user.min() >= 20
    assert per_user.max() > 4 * np.median(per_user)  # activity skew
    assert len(np.unique(r.user.astype(np.int64) * small.n_items + r.item)) == len(r)  # no repeated pair


def test_item_popularity_is_skewed_like_movielens(small):
    counts = np.sort(np.bincount(small.ratings.item, minlength=small.n_items))[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert 0.3 < top_share < 0.8  # 1M ratings: about 48%


def test_ratings_are_1_to_5_with_ml1m_shares_and_time_increases_per_user(small):
    r = small.ratings
    shares = np.bincount(r.rating.astype(int), minlength=6)[1:] / len(r)
    np.testing.assert_allclose(shares, [0.056, 0.108, 0.261, 0.349, 0.226], atol=0.01)
    for u in range(5):
        assert np.all(np.diff(r.timestamp[r.user == u]) > 0)


def test_written_files_load_as_ml1m_and_split_like_the_generated_set(small, tmp_path):
    write_grouplens_1m(small, tmp_path)
    loaded = load_dataset("ml-1m", tmp_path)
    assert (loaded.n_users, loaded.n_items, len(loaded.ratings)) == (small.n_users, small.n_items, len(small.ratings))
    a, b = leave_one_out(small), leave_one_out(loaded)
    assert a.summary() == b.summary()
    assert a.summary()["evaluated_users"] == small.n_users
