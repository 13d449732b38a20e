"""Admission control in front of the LLM: a request either gets an LLM slot in time or is answered
at once without one, so under overload the admitted requests finish and the rest do not wait.

A fixed number of requests score at a time (`slots`, the measured capacity: the engine batches a
request's prompts, and past a few requests at once every request only gets slower). Up to
`max_waiting` more wait for a slot, each only as long as its own budget allows once the expected
scoring time (a running average of recent ones) is set aside. A request that cannot get a slot
that way is refused with `Overloaded` before it waits in vain; the caller answers it degraded
(backbone order, reason `overloaded`) or with 429, by a setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Overloaded(Exception):
    """No LLM slot within the budget; `retry_after_s` is when one is likely free."""

    def __init__(self, reason: str, retry_after_s: float):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class LLMAdmission:
    def __init__(self, slots: int, max_waiting: int, initial_seconds: float = 1.0, smoothing: float = 0.2):
        if slots < 1 or max_waiting < 0:
            raise ValueError("slots >= 1 and max_waiting >= 0")
        self.slots, self.max_waiting = slots, max_waiting
        self._free = asyncio.Semaphore(slots)
        self._waiting = 0
        self._in_use = 0
        self.expected_seconds = initial_seconds  # running average of a request's scoring time
        self._smoothing = smoothing

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_use(self) -> int:
        return self._in_use

    def record(self, seconds: float) -> None:
        self.expected_seconds += self._smoothing * (seconds - self.expected_seconds)

    @asynccontextmanager
    async def slot(self, budget_s: float) -> AsyncIterator[float]:
        """Hold a slot for the scoring; yields the budget left once it is held."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._free.locked():
            wait_s = budget_s - self.expected_seconds
            if self._waiting >= self.max_waiting or wait_s <= 0:
                raise Overloaded("overloaded", retry_after_s=self.expected_seconds)
            self._waiting += 1
            try:
                async with asyncio.timeout(wait_s):  # a cancelled Semaphore.acquire gives its wake-up on
                    await self._free.acquire()
            except TimeoutError:
                raise Overloaded("overloaded", retry_after_s=self.expected_seconds) from None
            finally:
                self._waiting -= 1
        else:
            await self._free.acquire()
        self._in_use += 1
        try:
            yield budget_s - (loop.time() - started)
        finally:
            self._in_use -= 1
            self._free.release()
