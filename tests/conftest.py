"""Shared fixtures. The embedded ML-100K is fetched once into the project cache (.cache/)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from training.data import leave_one_out, load_dataset
from training.data.types import MOVIELENS_SCALE, Item, User, build_dataset

CACHE = Path(os.environ.get("RECRANKER_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache"))


@pytest.fixture(scope="session")
def ml100k():
    return load_dataset("ml-100k", cache_dir=CACHE)


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    return leave_one_out(ml100k)


def synthetic_dataset(n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0):
    """Users in two taste groups that like items from their half of the catalogue, so a model can learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        half = np.arange(n_items // 2) + (n_items // 2 if u % 2 else 0)
        liked = rng.choice(half, size=per_user, replace=False)
        other = rng.choice(np.setdiff1d(np.arange(n_items), half), size=3, replace=False)
        events = [(i, 5.0) for i in liked] + [(i, 1.0) for i in other]
        order = rng.permutation(len(events))
        for t, k in enumerate(order):
            item, rating = events[k]
            rows.append((str(u), str(item), rating, 1000 + t))
    users = [User(user_id=str(u)) for u in range(n_users)]
    items = [Item(item_id=str(i), title=f"Movie {i}") for i in range(n_items)]
    return build_dataset("synthetic", users, items, rows, MOVIELENS_SCALE)


@pytest.fixture
def synthetic():
    return synthetic_dataset()
