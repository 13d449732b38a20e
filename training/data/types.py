"""The one in-memory form of a rating dataset, whatever file format it came from.

External ids are kept as strings (MovieLens numbers, BookCrossing ISBNs); everything downstream
works on dense indices 0..n-1 into `users` and `items`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    genres: tuple[str, ...] = ()
    year: int | None = None


# An age in years outside this range is a data-entry error (BookCrossing holds 0 and 244), not a
# fact a prompt should state; loaders drop it.
PLAUSIBLE_AGE_YEARS = range(5, 101)


@dataclass(frozen=True)
class User:
    user_id: str
    # Years (ML-100K, BookCrossing), or the source's age band where it only records bands (ML-1M:
    # "under 18", "18-24", ..., "56+"). None when unknown or implausible.
    age: int | str | None = None
    gender: str | None = None
    occupation: str | None = None
    location: str | None = None


def plausible_age(years: int | None) -> int | None:
    """`years` if a person could plausibly be that old and rate things, else None."""
    return years if years is not None and years in PLAUSIBLE_AGE_YEARS else None


@dataclass(frozen=True)
class PreferenceScale:
    """How explicit ratings become preferences (PAPER.md: >= 4 liked, <= 2 disliked on 1-5)."""

    min_rating: float
    max_rating: float
    liked_at_least: float
    disliked_at_most: float

    def validate(self, rating: float) -> bool:
        return self.min_rating <= rating <= self.max_rating


MOVIELENS_SCALE = PreferenceScale(min_rating=1, max_rating=5, liked_at_least=4, disliked_at_most=2)
# BookCrossing rates 1-10 (0 means an implicit interaction and is dropped on load). We map the
# paper's 4-of-5 / 2-of-5 cut-offs onto the 10-point scale: >= 8 liked, <= 4 disliked.
BOOKCROSSING_SCALE = PreferenceScale(min_rating=1, max_rating=10, liked_at_least=8, disliked_at_most=4)


@dataclass
class Ratings:
    """Parallel arrays, one entry per rating event. `timestamp` orders a user's events; datasets
    without time (BookCrossing) use the row order of the source file."""

    user: np.ndarray  # int32 index into Dataset.users
    item: np.ndarray  # int32 index into Dataset.items
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, rows: np.ndarray) -> Ratings:
        """The ratings at `rows` (indexes), in that order."""
        return Ratings(self.user[rows], self.item[rows], self.rating[rows], self.timestamp[rows])


@dataclass
class Dataset:
    name: str
    users: list[User]
    items: list[Item]
    ratings: Ratings
    scale: PreferenceScale
    user_index: dict[str, int] = field(init=False, repr=False)
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_index = {u.user_id: i for i, u in enumerate(self.users)}
        self.item_index = {it.item_id: i for i, it in enumerate(self.items)}

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def summary(self) -> dict[str, int | str]:
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "ratings": len(self.ratings),
        }


def build_dataset(
    name: str,
    users: list[User],
    items: list[Item],
    rows: list[tuple[str, str, float, int]],
    scale: PreferenceScale,
) -> Dataset:
    """Index raw (user_id, item_id, rating, timestamp) rows against the user and item tables.

    Users or items that appear only in the ratings get a bare entry, so no rating is lost.
    """
    user_pos = {u.user_id: i for i, u in enumerate(users)}
    item_pos = {it.item_id: i for i, it in enumerate(items)}
    users, items = list(users), list(items)
    u_idx = np.empty(len(rows), dtype=np.int32)
    i_idx = np.empty(len(rows), dtype=np.int32)
    for n, (uid, iid, _, _) in enumerate(rows):
        if uid not in user_pos:
            user_pos[uid] = len(users)
            users.append(User(user_id=uid))
        if iid not in item_pos:
            item_pos[iid] = len(items)
            items.append(Item(item_id=iid, title=iid))
        u_idx[n] = user_pos[uid]
        i_idx[n] = item_pos[iid]
    ratings = Ratings(
        user=u_idx,
        item=i_idx,
        rating=np.fromiter((r[2] for r in rows), dtype=np.float32, count=len(rows)),
        timestamp=np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows)),
    )
    return Dataset(name=name, users=users, items=items, ratings=ratings, scale=scale)
