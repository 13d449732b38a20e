"""Key-value caches behind one small interface: Redis (shared by every gateway replica) or an
in-process dict (a single gateway without Redis, e.g. `make serve` on a machine that has none).

Every Redis failure surfaces as `CacheUnavailable`, so callers decide how to degrade; short socket
timeouts keep a dead or stalled Redis from eating a request's deadline.
"""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError


class CacheUnavailable(Exception):
    pass


class KeyValueCache(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def delete(self, *keys: str) -> None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class RedisCache:
    name = "redis"

    def __init__(self, url: str, timeout_s: float = 0.1, max_connections: int = 64):
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=max_connections,
            retry_on_timeout=False,
        )

    async def _call(self, coro):
        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._client.get(key))

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._call(self._client.set(key, value, ex=ttl_s))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._call(self._client.delete(*keys))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping()))
        except CacheUnavailable:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


class MemoryCache:
    """Per-process cache with the same TTL semantics; bounded so it cannot grow without limit."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000):
        self._data: dict[str, tuple[float, bytes]] = {}
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            self._data.pop(key, None)
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if len(self._data) >= self._max:
            self._data.pop(next(iter(self._data)))  # oldest insertion first
        self._data[key] = (time.monotonic() + ttl_s, value)

    async def delete(self, *keys: str) -> None:
        for k in keys:
            self._data.pop(k, None)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()


def cache_from_url(url: str, timeout_s: float) -> KeyValueCache:
    if url.startswith("memory://"):
        return MemoryCache()
    return RedisCache(url, timeout_s)
