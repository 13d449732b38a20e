"""Leave-one-out split over liked items ordered by time (PAPER.md).

Per user, all rating events are ordered by (timestamp, row order). Among the liked events
(rating >= scale.liked_at_least) the last is the test item and the one before it the validation
item. Decision (the paper is vague here): the training part is every event, liked or not, that comes
strictly before the validation item in that order. Events after it (other than the test item) are
dropped, so nothing built from the training part can see the validation or test period.
Users with fewer than three liked items keep all their events for training and are not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.errors import DataError
from training.data.types import Dataset

NO_ITEM = -1


@dataclass
class Split:
    dataset: Dataset
    # Per user, training events in time order: item indices and ratings.
    train_items: list[np.ndarray]
    train_ratings: list[np.ndarray]
    valid_item: np.ndarray  # int32 per user, NO_ITEM when the user is not evaluated
    test_item: np.ndarray

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    def liked_sequence(self, user: int) -> np.ndarray:
        """Training liked items of one user in time order (the input of sequential backbones)."""
        return self.train_items[user][self.train_ratings[user] >= self.dataset.scale.liked_at_least]

    def disliked_sequence(self, user: int) -> np.ndarray:
        return self.train_items[user][self.train_ratings[user] <= self.dataset.scale.disliked_at_most]

    def liked_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """All (user, item) training likes, the positives of the general backbones."""
        users, items = [], []
        for u in range(self.n_users):
            seq = self.liked_sequence(u)
            users.append(np.full(len(seq), u, dtype=np.int64))
            items.append(seq.astype(np.int64))
        return np.concatenate(users), np.concatenate(items)

    def evaluated_users(self) -> np.ndarray:
        return np.flatnonzero(self.test_item != NO_ITEM)

    def history(self, user: int, stage: str) -> np.ndarray:
        """Liked items a model may read when ranking for `stage` ('valid' or 'test').

        At test time the validation item is already in the past, as in RecBole's leave-one-out."""
        seq = self.liked_sequence(user)
        if stage == "test" and self.valid_item[user] != NO_ITEM:
            seq = np.append(seq, self.valid_item[user])
        return seq

    def known_items(self, user: int, stage: str) -> np.ndarray:
        """Items to mask from a full ranking at `stage`: everything the user has already rated."""
        known = self.train_items[user]
        if stage == "test" and self.valid_item[user] != NO_ITEM:
            known = np.append(known, self.valid_item[user])
        return np.unique(known)

    def target(self, stage: str) -> np.ndarray:
        return self.valid_item if stage == "valid" else self.test_item

    def summary(self) -> dict[str, int]:
        evaluated = self.evaluated_users()
        liked = sum(len(self.liked_sequence(u)) for u in range(self.n_users))
        disliked = sum(len(self.disliked_sequence(u)) for u in range(self.n_users))
        return {
            "evaluated_users": int(len(evaluated)),
            "train_events": int(sum(len(t) for t in self.train_items)),
            "train_liked": int(liked),
            "train_disliked": int(disliked),
            "valid_items": int(len(evaluated)),
            "test_items": int(len(evaluated)),
        }


def leave_one_out(dataset: Dataset) -> Split:
    r = dataset.ratings
    liked_cut = dataset.scale.liked_at_least
    # Stable sort: by user, then timestamp, then original row order.
    order = np.lexsort((np.arange(len(r)), r.timestamp, r.user))
    users, items, ratings = r.user[order], r.item[order], r.rating[order]
    bounds = np.searchsorted(users, np.arange(dataset.n_users + 1))
    train_items, train_ratings = [], []
    valid = np.full(dataset.n_users, NO_ITEM, dtype=np.int32)
    test = np.full(dataset.n_users, NO_ITEM, dtype=np.int32)
    for u in range(dataset.n_users):
        u_items = items[bounds[u] : bounds[u + 1]]
        u_ratings = ratings[bounds[u] : bounds[u + 1]]
        liked_pos = np.flatnonzero(u_ratings >= liked_cut)
        if len(liked_pos) >= 3:
            valid_pos, test_pos = liked_pos[-2], liked_pos[-1]
            valid[u], test[u] = u_items[valid_pos], u_items[test_pos]
            u_items, u_ratings = u_items[:valid_pos], u_ratings[:valid_pos]
        train_items.append(u_items.astype(np.int32))
        train_ratings.append(u_ratings.astype(np.float32))
    return Split(dataset=dataset, train_items=train_items, train_ratings=train_ratings, valid_item=valid, test_item=test)


def rows_as_of(dataset: Dataset, stage: str) -> np.ndarray:
    """Indexes of the ratings a user had made when `stage` ('valid' or 'test') began, in time order
    (ties by row): every event before the held-out item of that stage, so at test time the training
    part and the validation item. Users that are not evaluated keep every event (they are trained on,
    never held out). The serving tables of this state are what `make replay` serves."""
    r = dataset.ratings
    order = np.lexsort((np.arange(len(r)), r.timestamp, r.user))
    users, ratings = r.user[order], r.rating[order]
    bounds = np.searchsorted(users, np.arange(dataset.n_users + 1))
    keep = []
    for u in range(dataset.n_users):
        liked_pos = np.flatnonzero(ratings[bounds[u] : bounds[u + 1]] >= dataset.scale.liked_at_least)
        cut = bounds[u + 1] if len(liked_pos) < 3 else bounds[u] + liked_pos[-1 if stage == "test" else -2]
        keep.append(order[bounds[u] : cut])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def require_held_out_users(split: Split, source: Path | str) -> Split:
    """A split with no evaluated user has nothing to validate or test on: stop before any training."""
    if len(split.evaluated_users()) == 0:
        cut = split.dataset.scale.liked_at_least
        raise DataError(source, f"no user has 3 or more liked ratings (rating >= {cut:g}), so none can be held out for validation and test")
    return split
