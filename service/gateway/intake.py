"""POST /events as a use case: validate, make durable, apply, invalidate, share with the replicas."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from service.gateway.events import EventBus
from service.gateway.history import HistoryCache
from service.gateway.metrics import GatewayMetrics
from service.gateway.rejections import InvalidInput, Unavailable, UnknownEntity
from service.gateway.schemas import EventsRequest, EventsResponse
from service.gateway.store import EventsLogError, InteractionStore, StoredEvent


@dataclass
class EventIntake:
    store: InteractionStore
    histories: HistoryCache
    metrics: GatewayMetrics
    bus: EventBus | None = None  # None with the in-process cache (a single gateway)

    def _validate(self, body: EventsRequest) -> None:
        store = self.store
        unknown_users = sorted({e.user_id for e in body.events if not store.has_user(e.user_id)})
        if unknown_users:
            raise UnknownEntity("unknown_user", f"{len(unknown_users)} user ids are not known", {"user_ids": unknown_users[:20]})
        unknown_items = sorted({e.item_id for e in body.events if e.item_id not in store.items})
        if unknown_items:
            raise InvalidInput("unknown_items", f"{len(unknown_items)} item ids are not in the catalogue", {"item_ids": unknown_items[:20]})
        bad = [i for i, e in enumerate(body.events) if not store.min_rating <= e.rating <= store.max_rating]
        if bad:
            raise InvalidInput("invalid_rating", f"ratings must lie in [{store.min_rating:g}, {store.max_rating:g}]", {"event_indices": bad[:20]})

    async def accept(self, body: EventsRequest) -> EventsResponse:
        self._validate(body)
        now = int(time.time())
        events = [StoredEvent(e.user_id, e.item_id, float(e.rating), e.timestamp if e.timestamp is not None else now, uuid.uuid4().hex) for e in body.events]
        try:
            self.store.append_many(events)
        except EventsLogError as exc:  # not on disk: nothing applied, the client may retry
            raise Unavailable("events_not_stored", f"the events could not be written durably ({exc}); retry", retry_after_s=1) from None
        users = sorted({e.user_id for e in events})
        failed = [u for u in users if not await self.histories.invalidate(u)]
        records = [{"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "rating": e.rating, "timestamp": e.timestamp} for e in events]
        shared = await self.bus.publish(records) if self.bus is not None else False
        self.metrics.events.inc(len(events))
        return EventsResponse(accepted=len(events), invalidated_users=[u for u in users if u not in failed], cache_invalidation_failed=failed, shared_with_replicas=shared)
