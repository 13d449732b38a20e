"""The backing store: the item catalogue, user features and every user's rating history.

Loaded once at start-up from the dataset the model was tuned on; `POST /events` appends to it.
Appended events go to an append-only JSONL log first (when configured), so a restart replays them
and nothing acknowledged is lost. Redis only caches what this store holds.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.ranking.profile import Demographics, HistoryEvent


@dataclass(frozen=True)
class CatalogItem:
    index: int
    item_id: str
    title: str
    genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interaction:
    item_id: str
    rating: float
    timestamp: int


class UnknownUser(KeyError):
    pass


class UnknownItems(KeyError):
    def __init__(self, item_ids: list[str]):
        super().__init__(item_ids)
        self.item_ids = item_ids


@dataclass
class InteractionStore:
    items: dict[str, CatalogItem]
    users: dict[str, Demographics]
    histories: dict[str, list[Interaction]]
    min_rating: float
    max_rating: float
    liked_at_least: float
    disliked_at_most: float
    events_log: Path | None = None
    popularity: dict[str, int] = field(default_factory=dict)  # likes per item
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _applied: set[str] = field(default_factory=set, repr=False)  # event ids, so a replayed event counts once

    @classmethod
    def from_dataset(cls, dataset, events_log: Path | None = None) -> InteractionStore:
        """`dataset` is a training.data.Dataset; events in `events_log` are replayed on top."""
        items = {it.item_id: CatalogItem(i, it.item_id, it.title, tuple(it.genres)) for i, it in enumerate(dataset.items)}
        users = {u.user_id: Demographics(u.age, u.gender, u.occupation) for u in dataset.users}
        r = dataset.ratings
        order = np.lexsort((np.arange(len(r)), r.timestamp, r.user))
        item_ids = [it.item_id for it in dataset.items]
        histories: dict[str, list[Interaction]] = {u.user_id: [] for u in dataset.users}
        for row in order.tolist():
            uid = dataset.users[int(r.user[row])].user_id
            histories[uid].append(Interaction(item_ids[int(r.item[row])], float(r.rating[row]), int(r.timestamp[row])))
        scale = dataset.scale
        # Likes, as the learned fusion's `log_popularity` was fitted on (training-period likes).
        counts = np.bincount(r.item[r.rating >= scale.liked_at_least], minlength=len(item_ids))
        store = cls(
            items=items, users=users, histories=histories,
            min_rating=scale.min_rating, max_rating=scale.max_rating,
            liked_at_least=scale.liked_at_least, disliked_at_most=scale.disliked_at_most,
            events_log=events_log, popularity={iid: int(c) for iid, c in zip(item_ids, counts.tolist())},
        )
        if events_log is not None and events_log.is_file():
            for line in events_log.read_text().splitlines():
                if line.strip():
                    e = json.loads(line)
                    store._apply(e["user_id"], Interaction(e["item_id"], float(e["rating"]), int(e["timestamp"])), e.get("event_id"))
        return store

    def has_user(self, user_id: str) -> bool:
        return user_id in self.users

    def demographics(self, user_id: str) -> Demographics:
        try:
            return self.users[user_id]
        except KeyError:
            raise UnknownUser(user_id) from None

    def check_items(self, item_ids: list[str]) -> list[CatalogItem]:
        missing = [i for i in item_ids if i not in self.items]
        if missing:
            raise UnknownItems(missing)
        return [self.items[i] for i in item_ids]

    def history(self, user_id: str) -> list[HistoryEvent]:
        """The user's ratings in time order, with each item's title and genres."""
        if user_id not in self.users:
            raise UnknownUser(user_id)
        with self._lock:
            events = list(self.histories.get(user_id, ()))
        out = []
        for e in events:
            item = self.items[e.item_id]
            out.append(HistoryEvent(item.title, e.rating, item.genres, item_id=e.item_id))
        return out

    def append(self, user_id: str, item_id: str, rating: float, timestamp: int, event_id: str | None = None) -> bool:
        """Durably record one event (log first, then memory); False when `event_id` was already
        applied (another replica's event seen twice). Callers validate ids and rating."""
        if event_id is not None and event_id in self._applied:
            return False
        event = Interaction(item_id, float(rating), int(timestamp))
        if self.events_log is not None:
            self.events_log.parent.mkdir(parents=True, exist_ok=True)
            with self.events_log.open("a") as fh:
                fh.write(json.dumps({"user_id": user_id, "item_id": item_id, "rating": event.rating, "timestamp": event.timestamp, "event_id": event_id}) + "\n")
        return self._apply(user_id, event, event_id)

    def _apply(self, user_id: str, event: Interaction, event_id: str | None = None) -> bool:
        with self._lock:
            if event_id is not None:
                if event_id in self._applied:
                    return False
                self._applied.add(event_id)
            history = self.histories.setdefault(user_id, [])
            history.append(event)
            history.sort(key=lambda e: e.timestamp)  # stable: ties keep arrival order
            if event.rating >= self.liked_at_least:
                self.popularity[event.item_id] = self.popularity.get(event.item_id, 0) + 1
        return True
