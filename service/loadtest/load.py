"""Load generation and latency summaries: open loop at a fixed rate, or closed loop with a fixed
number of users in flight. Runs in its own process, apart from the server it measures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    seconds: float
    ok: bool
    degraded: bool = False
    invalid: int = 0


@dataclass
class Summary:
    requests: int
    errors: int
    degraded: int
    wall_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


def summarise(outcomes: Sequence[Outcome], wall_s: float, **extra) -> Summary:
    lat = np.array([o.seconds for o in outcomes]) * 1000
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else np.zeros(3)
    return Summary(
        requests=len(outcomes), errors=sum(not o.ok for o in outcomes), degraded=sum(o.degraded for o in outcomes),
        wall_s=round(wall_s, 3), rps=round(len(outcomes) / wall_s, 3) if wall_s else 0.0,
        p50_ms=round(float(pct[0]), 3), p95_ms=round(float(pct[1]), 3), p99_ms=round(float(pct[2]), 3),
        mean_ms=round(float(lat.mean()), 3) if len(lat) else 0.0, extra=extra,
    )


async def open_loop(call: Callable[[int], Awaitable[Outcome]], rate: float, duration_s: float) -> tuple[list[Outcome], float]:
    """Start request i at i / rate seconds whatever the server does (no coordinated omission:
    latency counts from the scheduled start)."""
    n = int(rate * duration_s)
    start = time.perf_counter()

    async def one(i: int) -> Outcome:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        out = await call(i)
        out.seconds = time.perf_counter() - scheduled
        return out

    outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    return list(outcomes), time.perf_counter() - start


async def closed_loop(call: Callable[[int], Awaitable[Outcome]], n: int, concurrency: int) -> tuple[list[Outcome], float]:
    slots = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(i: int) -> Outcome:
        async with slots:
            t = time.perf_counter()
            out = await call(i)
            out.seconds = time.perf_counter() - t
            return out

    outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    return list(outcomes), time.perf_counter() - start
