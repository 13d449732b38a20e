"""What the prompts and the learned fusion know about a user, built from a rating history.

Training (instruction data, offline evaluation) and the gateway both call these functions, so a
user's profile and conventional features are the same offline and online.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from service.ranking.prompts import RatedItem, UserProfile


@dataclass(frozen=True)
class HistoryEvent:
    """One rating of the user's history, in time order."""

    title: str
    rating: float
    genres: tuple[str, ...] = ()
    item_id: str | None = None


@dataclass(frozen=True)
class Demographics:
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None


def build_profile(history: Iterable[HistoryEvent], liked_at_least: float, disliked_at_most: float, who: Demographics = Demographics()) -> UserProfile:
    """Liked and disliked items in time order; ratings in between say little and are left out."""
    liked, disliked = [], []
    for event in history:
        if event.rating >= liked_at_least:
            liked.append(RatedItem(event.title, event.rating))
        elif event.rating <= disliked_at_most:
            disliked.append(RatedItem(event.title, event.rating))
    return UserProfile(liked=liked, disliked=disliked, age=who.age, gender=who.gender, occupation=who.occupation)


def genre_overlap(liked_genres: Iterable[Sequence[str]], candidate_genres: Sequence[Sequence[str]]) -> np.ndarray:
    """Per candidate: how often its genres occur among the user's liked items, per liked item."""
    counts: dict[str, int] = {}
    n_liked = 0
    for genres in liked_genres:
        n_liked += 1
        for g in genres:
            counts[g] = counts.get(g, 0) + 1
    total = max(1, n_liked)
    return np.asarray([sum(counts.get(g, 0) for g in genres) / total for genres in candidate_genres], dtype=float)


def conventional_features(liked_genres: Iterable[Sequence[str]], candidate_genres: Sequence[Sequence[str]], candidate_popularity: Sequence[float]) -> dict[str, np.ndarray]:
    """The learned fusion's non-LLM features besides the backbone: popularity and genre overlap."""
    return {
        "log_popularity": np.log1p(np.asarray(candidate_popularity, dtype=float)),
        "genre_overlap": genre_overlap(liked_genres, candidate_genres),
    }
