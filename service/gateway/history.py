"""Read-through caches over the backing store: user histories and per-request task scores.

Keys are versioned (`<prefix>:v<SCHEMA>:<dataset>:...`), so a release that changes what is stored
never reads an older release's entries. A task-score entry is keyed by a fingerprint of the user's
history, so an event that changes the history also retires every cached score of that user; the
event additionally deletes the history entry itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from service.gateway.cache import CacheUnavailable, KeyValueCache
from service.gateway.store import InteractionStore
from service.ranking.profile import HistoryEvent

SCHEMA = 3  # 2: history rows as [item_id, rating, title, genres]; 3: {"v": store version, "rows": ...}


@dataclass(frozen=True)
class CacheRead:
    value: object
    result: str  # "hit", "miss" or "error" (the cache failed; the value came from the store)


def namespace(prefix: str, dataset: str) -> str:
    """The one Redis namespace of a gateway: every key it writes starts with this."""
    return f"{prefix}:v{SCHEMA}:{dataset}"


def history_fingerprint(history: Sequence[HistoryEvent]) -> str:
    blob = json.dumps([(e.item_id, e.rating) for e in history]).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


class HistoryCache:
    def __init__(self, cache: KeyValueCache, store: InteractionStore, prefix: str, dataset: str, ttl_s: int):
        self.cache, self.store, self.ttl_s = cache, store, ttl_s
        self._ns = namespace(prefix, dataset)

    def key(self, user_id: str) -> str:
        return f"{self._ns}:history:{user_id}"

    async def get(self, user_id: str) -> CacheRead:
        try:
            raw = await self.cache.get(self.key(user_id))
        except CacheUnavailable:
            return CacheRead(self.store.history(user_id), "error")
        if raw is not None:
            try:
                entry = json.loads(raw)
                # Never older than an event this gateway accepted: an entry from before it (its
                # invalidation failed during a Redis stall, or raced the write) is rebuilt below.
                if entry["v"] >= self.store.version(user_id):
                    return CacheRead([HistoryEvent(title, float(rating), tuple(genres), item_id) for item_id, rating, title, genres in entry["rows"]], "hit")
            except (ValueError, TypeError, KeyError):
                pass  # an entry this release cannot read: rebuilt from the store below, like a miss
        version = self.store.version(user_id)
        history = self.store.history(user_id)
        # rows as plain lists: dataclasses.asdict was most of a cache miss's cost
        rows = [[e.item_id, e.rating, e.title, e.genres] for e in history]
        try:
            await self.cache.set(self.key(user_id), json.dumps({"v": version, "rows": rows}).encode(), self.ttl_s)
        except CacheUnavailable:
            return CacheRead(history, "error")
        return CacheRead(history, "miss")

    async def invalidate(self, user_id: str) -> bool:
        """False when the cache could not be reached; the stale entry is then never served by this
        gateway (its version is older than the store's) and is replaced at the next read."""
        try:
            await self.cache.delete(self.key(user_id))
            return True
        except CacheUnavailable:
            return False


class ScoreCache:
    """Task utilities of one (model, user history, candidate list, task) combination."""

    def __init__(self, cache: KeyValueCache, prefix: str, dataset: str, ttl_s: int):
        self.cache, self.ttl_s = cache, ttl_s
        self._ns = namespace(prefix, dataset)

    def key(self, model: str, user_id: str, fingerprint: str, item_ids: Sequence[str], task: str) -> str:
        blob = json.dumps([model, list(item_ids), task]).encode()
        return f"{self._ns}:scores:{user_id}:{fingerprint}:{hashlib.blake2b(blob, digest_size=10).hexdigest()}"

    async def get(self, key: str) -> CacheRead:
        try:
            raw = await self.cache.get(key)
        except CacheUnavailable:
            return CacheRead(None, "error")
        return CacheRead(None if raw is None else json.loads(raw), "hit" if raw is not None else "miss")

    async def put(self, key: str, value: dict) -> bool:
        try:
            await self.cache.set(key, json.dumps(value).encode(), self.ttl_s)
            return True
        except CacheUnavailable:
            return False
