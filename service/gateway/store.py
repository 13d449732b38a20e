"""The backing store: the item catalogue, user features and every user's rating history.

Loaded once at start-up from the serving tables of the data set the model was tuned on;
`POST /events` appends to it. Appended events go to an append-only JSONL log first, fsync'd before
they are applied (and before the 200), so a restart replays them and nothing acknowledged is lost
whatever Redis does. Redis only caches what this store holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.gateway.serving_tables import ServingTables, read_serving_tables
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


@dataclass(frozen=True)
class StoredEvent:
    """One line of the events log."""

    user_id: str
    item_id: str
    rating: float
    timestamp: int
    event_id: str | None = None


class EventsLogError(RuntimeError):
    """The events log cannot be written or read back; the message names the file (and line)."""


def read_events_log(path: Path) -> list[StoredEvent]:
    """Every event in the log. A torn last line (a crash mid-write, never acknowledged: the 200
    comes after the fsync) is skipped; a bad line before it is an error naming the line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EventsLogError(f"{path}: unreadable events log ({exc})") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            out.append(StoredEvent(str(e["user_id"]), str(e["item_id"]), float(e["rating"]), int(e["timestamp"]), e.get("event_id")))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):
                logging.getLogger("recranker.store").warning("%s, line %d: torn last line skipped (never acknowledged)", path, number)
                continue
            raise EventsLogError(f"{path}, line {number}: not an event ({exc})") from None
    return out


def compact_events_log(path: Path) -> list[StoredEvent]:
    """The log's events, each once (by event id; the stream can hand a replica the same event
    twice) and without a torn last line. When that is fewer lines than the file holds, the file
    is rewritten to exactly those events, all or nothing (temporary file, fsync, rename)."""
    events = read_events_log(path)
    seen: set[str] = set()
    unique = []
    for e in events:
        if e.event_id is not None:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
        unique.append(e)
    if path.is_file() and len(unique) < sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()):
        staging = path.with_name(path.name + ".compacting")
        try:
            with staging.open("w", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in unique))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staging, path)
        except OSError as exc:
            raise EventsLogError(f"{path}: could not compact the events log ({exc.strerror or exc})") from None
    return unique


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
    def from_folder(cls, folder: Path, events_log: Path | None = None) -> InteractionStore:
        """The serving tables in `folder` (see `serving_tables`); events in `events_log` replayed on top."""
        return cls.from_tables(read_serving_tables(folder), events_log)

    @classmethod
    def from_tables(cls, tables: ServingTables, events_log: Path | None = None) -> InteractionStore:
        items = {it["item_id"]: CatalogItem(i, it["item_id"], it["title"], tuple(it.get("genres") or ())) for i, it in enumerate(tables.items)}
        users = {u["user_id"]: Demographics(u.get("age"), u.get("gender"), u.get("occupation")) for u in tables.users}
        order = np.lexsort((np.arange(len(tables.user)), tables.timestamp, tables.user))
        item_ids = [it["item_id"] for it in tables.items]
        user_ids = [u["user_id"] for u in tables.users]
        histories: dict[str, list[Interaction]] = {uid: [] for uid in user_ids}
        for row in order.tolist():
            histories[user_ids[int(tables.user[row])]].append(Interaction(item_ids[int(tables.item[row])], float(tables.rating[row]), int(tables.timestamp[row])))
        scale = tables.scale
        # Likes, as the learned fusion's `log_popularity` was fitted on (training-period likes).
        counts = np.bincount(tables.item[tables.rating >= scale["liked_at_least"]], minlength=len(item_ids))
        store = cls(
            items=items, users=users, histories=histories,
            min_rating=scale["min_rating"], max_rating=scale["max_rating"],
            liked_at_least=scale["liked_at_least"], disliked_at_most=scale["disliked_at_most"],
            events_log=events_log, popularity={iid: int(c) for iid, c in zip(item_ids, counts.tolist())},
        )
        if events_log is not None:
            for e in compact_events_log(events_log):
                store._apply(e.user_id, Interaction(e.item_id, e.rating, e.timestamp), e.event_id)
        return store

    def has_user(self, user_id: str) -> bool:
        return user_id in self.users

    def demographics(self, user_id: str) -> Demographics:
        try:
            return self.users[user_id]
        except KeyError:
            raise UnknownUser(user_id) from None

    def version(self, user_id: str) -> int:
        """How many events the user's history holds: grows with every applied event, so a cached
        copy with a smaller version is older than something this store accepted."""
        with self._lock:
            return len(self.histories.get(user_id, ()))

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
        """Durably record one event; False when `event_id` was already applied."""
        return self.append_many([StoredEvent(user_id, item_id, float(rating), int(timestamp), event_id)])[0]

    def append_many(self, events: list[StoredEvent]) -> list[bool]:
        """Durably record events: written to the log and fsync'd first (one fsync for the batch),
        then applied; an EventsLogError means none was applied. Per event, False when its
        `event_id` was already applied (another replica's event seen twice). Callers validate ids
        and ratings."""
        fresh = [e for e in events if e.event_id is None or e.event_id not in self._applied]
        if self.events_log is not None and fresh:
            try:
                self.events_log.parent.mkdir(parents=True, exist_ok=True)
                with self.events_log.open("a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in fresh))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise EventsLogError(f"{self.events_log}: {exc.strerror or exc}") from None
        return [self._apply(e.user_id, Interaction(e.item_id, e.rating, e.timestamp), e.event_id) for e in events]

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
