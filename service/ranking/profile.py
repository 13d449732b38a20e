"""What the prompts and the learned fusion know about a user, built from a rating history.

Training (instruction data, offline evaluation) and the gateway both call these functions, so a
user's profile and conventional features are the same offline and online.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    age: int | str | None = None  # years, or a band such as "18-24" (ML-1M)
    gender: str | None = None
    occupation: str | None = None


def build_profile(history: Iterable[HistoryEvent], liked_at_least: float, disliked_at_most: float, who: Demographics = Demographics()) -> UserProfile:
    """Liked and disliked items in time order; ratings in between say little and are left out."""
    liked, disliked = [], []
    for event in history:
        if event.rating >= liked_at_least:
            liked.append(RatedItem(event.title, event.rating, event.item_id))
        elif event.rating <= disliked_at_most:
            disliked.append(RatedItem(event.title, event.rating, event.item_id))
    return UserProfile(liked=liked, disliked=disliked, age=who.age, gender=who.gender, occupation=who.occupation)
