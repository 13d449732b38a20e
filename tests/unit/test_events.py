"""The event stream between replicas (service/gateway/events.py) on the real Redis: what `publish`
tells the caller in each case, entries from producers outside the gateway that cannot be read, and a
follower that outlives a Redis outage. Each test has its own key prefix; the outage test has its
own Redis server, which it stops and starts again."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis

from service.gateway.cache import RedisCache
from service.gateway.events import EventBus
from service.gateway.history import HistoryCache
from service.gateway.store import InteractionStore
from service.llm.vllm_server import free_port
from tests.conftest import synthetic_dataset
from training.data.serving_export import write_serving_tables

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def serving(tmp_path):
    return write_serving_tables(synthetic_dataset(n_users=6, n_items=20, per_user=4), tmp_path / "serving")


@pytest.fixture
def prefix():
    name = f"recranker-events-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def replica(serving, url: str, prefix: str, timeout_s: float = 0.5) -> EventBus:
    """One gateway's side of the stream: its own store and history cache."""
    store = InteractionStore.from_folder(serving)
    return EventBus(url, prefix, "synthetic", store, HistoryCache(RedisCache(url), store, prefix, "synthetic", 60), timeout_s)


def rated(bus: EventBus, user: str) -> list[tuple[str, float]]:
    return [(e.item_id, e.rating) for e in bus.store.history(user)]


def event(user: str, item: str, rating: float = 5.0, timestamp: int = 2_000_000_000) -> dict:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "rating": rating, "timestamp": timestamp}


def test_publish_says_true_once_the_stream_holds_the_events(serving, prefix):
    async def go():
        bus = replica(serving, REDIS_URL, prefix)
        try:
            return await bus.publish([event("1", "7", 4.0)]), bus.key
        finally:
            await bus.aclose()

    shared, key = asyncio.run(go())
    assert shared is True
    [(_, fields)] = redis.Redis.from_url(REDIS_URL, decode_responses=True).xrange(key)
    assert {k: fields[k] for k in ("user_id", "item_id", "rating", "timestamp")} == {"user_id": "1", "item_id": "7", "rating": "4.0", "timestamp": "2000000000"}


def test_publish_says_false_when_redis_cannot_be_reached(serving, prefix):
    async def go():
        bus = replica(serving, f"redis://127.0.0.1:{free_port()}/0", prefix, timeout_s=0.2)
        try:
            return await bus.publish([event("1", "7")])
        finally:
            await bus.aclose()

    assert asyncio.run(go()) is False  # the events stay on this replica


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: a Redis stalled mid-write."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


@pytest.mark.timeout(60)
def test_publish_says_none_when_a_timeout_leaves_it_unknown_whether_the_events_landed(serving, prefix, silent_server):
    async def go():
        bus = replica(serving, silent_server, prefix, timeout_s=0.2)
        try:
            return await bus.publish([event("1", "7")])
        finally:
            await bus.aclose()

    assert asyncio.run(go()) is None


def test_a_replica_applies_the_stream_and_skips_entries_from_outside_producers_it_cannot_read(serving, prefix):
    bus = replica(serving, REDIS_URL, prefix)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    good = event("2", "11", 5.0)
    ids = [
        raw.xadd(bus.key, {"user_id": "2", "item_id": "12", "rating": "5"}),  # no timestamp
        raw.xadd(bus.key, {**good, "rating": "five"}),
        raw.xadd(bus.key, {**good, "timestamp": "yesterday"}),
        raw.xadd(bus.key, {k: str(v) for k, v in good.items()}),
    ]
    cached = bus.histories.key("2")
    raw.set(cached, b"a history from before the event")
    before = rated(bus, "2")

    async def go():
        try:
            await bus.catch_up()
        finally:
            await bus.aclose()
            await bus.histories.cache.aclose()

    asyncio.run(go())
    assert rated(bus, "2") == [*before, ("11", 5.0)]  # the readable entry, once
    assert bus.applied_from_stream == 1
    assert bus.last_id == ids[-1]  # read past the unreadable ones, not stuck on them
    assert not raw.exists(cached)  # the user's cached history goes with the event


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server on its own port that the test may stop and start again."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    processes: list[subprocess.Popen] = []

    def start() -> None:
        processes.append(subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {port}")

    def stop() -> None:
        processes[-1].terminate()
        processes[-1].wait(timeout=10)

    start()
    yield port, start, stop
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@pytest.mark.timeout(60)
def test_a_follower_keeps_following_through_a_redis_outage_and_applies_what_comes_after(serving, prefix, own_redis):
    port, start_redis, stop_redis = own_redis
    url = f"redis://127.0.0.1:{port}/0"

    async def go():
        follower_bus, publisher = replica(serving, url, prefix), replica(serving, url, prefix)
        follower = asyncio.create_task(follower_bus.follow())
        try:
            await asyncio.sleep(0.2)  # following: blocked in XREAD
            stop_redis()
            await asyncio.sleep(0.5)  # the read fails while Redis is down
            assert not follower.done(), "the follower ended with the outage"
            start_redis()
            for _ in range(100):
                if await publisher.publish([event("3", "15", 4.0)]):
                    break
                await asyncio.sleep(0.1)
            for _ in range(200):  # the follower retries about once a second
                if follower_bus.applied_from_stream:
                    break
                await asyncio.sleep(0.05)
            return rated(follower_bus, "3"), follower_bus.applied_from_stream
        finally:
            follower_bus.stop()
            follower.cancel()
            await asyncio.wait([follower], timeout=5)
            for bus in (follower_bus, publisher):
                await bus.aclose()
                await bus.histories.cache.aclose()

    history, applied = asyncio.run(go())
    assert applied == 1 and history[-1] == ("15", 4.0)
