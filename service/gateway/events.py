"""Interaction events shared by every gateway replica through a Redis stream.

Each replica holds the backing store in memory, so an event one replica accepts must reach the
others, or they would rebuild a user's history without it. `POST /events` applies the event
locally, then appends it to the stream `<prefix>:v<SCHEMA>:<dataset>:events`; every replica follows
the stream, applies what it has not seen (events carry ids) and deletes the user's cached history
again, which also clears a stale copy another replica may have cached in between. A replica that
starts reads the whole stream first. Producers outside the gateway may append to the same stream
(fields: event_id, user_id, item_id, rating, timestamp).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.gateway.history import HistoryCache, namespace
from service.gateway.store import InteractionStore

log = logging.getLogger("recranker.events")

STREAM_MAXLEN = 1_000_000  # approximate trim: a bounded stream, far more than a restart needs


class EventBus:
    def __init__(self, url: str, prefix: str, dataset: str, store: InteractionStore, histories: HistoryCache, timeout_s: float = 0.5):
        self.key = f"{namespace(prefix, dataset)}:events"
        self.store, self.histories = store, histories
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True)
        # XREAD BLOCK holds its connection for up to a second: its own client, longer timeout
        self._reader = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=timeout_s, decode_responses=True)
        self.last_id = "0-0"
        self.applied_from_stream = 0
        self._stopped = False

    async def publish(self, events: Sequence[dict]) -> bool | None:
        """True when the stream holds the events; False when Redis could not be reached (they stay on
        this replica); None when a timeout left it unknown whether the write landed (a replica that
        sees them applies each once, by its event id)."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for e in events:
                    pipe.xadd(self.key, {k: str(v) for k, v in e.items()}, maxlen=STREAM_MAXLEN, approximate=True)
                await pipe.execute()
            return True
        except (RedisTimeoutError, TimeoutError) as exc:
            log.warning("event stream timed out; the events may or may not reach the replicas", extra={"error": str(exc)[:200]})
            return None
        except (RedisError, OSError) as exc:
            log.warning("event stream unavailable; events stay on this replica", extra={"error": str(exc)[:200]})
            return False

    async def _apply(self, entries) -> None:
        users = set()
        for entry_id, fields in entries:
            self.last_id = entry_id
            try:
                applied = self.store.append(fields["user_id"], fields["item_id"], float(fields["rating"]), int(float(fields["timestamp"])), fields.get("event_id"))
            except (KeyError, ValueError) as exc:
                log.warning("malformed stream entry skipped", extra={"entry": entry_id, "error": str(exc)})
                continue
            if applied:
                self.applied_from_stream += 1
                users.add(fields["user_id"])
        for user in users:
            await self.histories.invalidate(user)

    async def catch_up(self) -> None:
        try:
            while True:
                start = "(" + self.last_id if self.last_id != "0-0" else "-"
                batch = await self._reader.xrange(self.key, min=start, count=1000)
                if not batch:
                    return
                await self._apply(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not read the event stream at start", extra={"error": str(exc)[:200]})

    def stop(self) -> None:
        """End `follow` at its next turn: redis-py can turn a cancelled XREAD into a connection
        error, which the loop would otherwise take for a Redis outage and retry (a hung shutdown)."""
        self._stopped = True

    async def follow(self) -> None:
        while not self._stopped:
            try:
                reply = await self._reader.xread({self.key: self.last_id}, block=1000, count=500)
                for _, entries in reply or ():
                    await self._apply(entries)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(1.0)  # Redis down: retry; local events still work

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._reader.aclose()
