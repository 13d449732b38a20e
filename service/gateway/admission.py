"""Admission control in front of the LLM: a request either gets an LLM slot in time to finish within
its budget or is answered at once without one, so under overload the admitted requests finish and
the rest do not wait.

The LLM server shares its cores between the requests it scores, and batches them: n at once each
take about a + b * n seconds (`ScoringTimeModel`, fitted online from every finished scoring and the
mean number in flight while it ran; until the fit has seen more than one level of concurrency it
assumes n times the time of one, the cautious reading). A request starts scoring only when that
estimate, for it and for every request already scoring, still fits the budgets, and never more than
`slots` at once. On a fast server many fit in a deadline; on a slow one a single request may take
most of it, and then one at a time is what gives answers at all (measured on a 2-core AVX2 machine:
4 at once took 11.6 s each against a 5 s deadline, so every one of them missed it). The fixed part
`a` matters because batching is cheap: in that machine's `make bench` (2026-12-03) a user took about
3.6 s at light load and 8.5 s with four in flight, not 14.4 s, so "n times one" over-estimates n at
once and can keep slots idle that a deadline has room for (not measured apart on a real server: the
batching fake in tests/unit/test_admission.py shows it).
Up to `max_waiting` more wait for room, each only as long as its budget still leaves time for its
own scoring; the others are refused with `Overloaded` at once, and the caller answers them degraded
(backbone order, reason `overloaded`) or with 429, by a setting. When nothing is scoring a request
is always admitted, so the estimate keeps learning even when it says nothing fits.
The line is not first-come first-served: when room frees, whoever fits its own budget starts, a new
arrival included, so a waiter with little budget left never holds back one that fits (strict order
would idle a slot until the head of the line gave up). A full waiting room refuses at once.

The estimate is a mean, and a scoring that runs longer than its mean misses its deadline when the
budget was filled to the mean (`make bench`'s overload runs on a 2-core Zen 4 EPYC, 2026-12-07: 10 and
27 admitted requests came back `llm_deadline`). With `quantile` above 0.5 admission plans with that
quantile of the scoring time instead: the mean times 1 + z * (the spread of recent scorings around
the model, relative to it), z the normal quantile.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from statistics import NormalDist


class Overloaded(Exception):
    """No LLM slot within the budget; `retry_after_s` is when one is likely free."""

    def __init__(self, reason: str, retry_after_s: float):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass
class _Scoring:
    started: float
    deadline: float
    area_at_start: float  # the in-flight integral when it started, for its mean concurrency


class ScoringTimeModel:
    """Seconds one scoring takes with n in flight: a + b * n, by weighted least squares over recent
    (mean in flight, seconds) samples with exponential forgetting.

    Falls back to the proportional model (a = 0, b = a running average of seconds / n) while the
    samples span less than `min_spread` in concurrency, or when the fit is not physical (a < 0 or
    b <= 0): with one level of concurrency seen, the split between fixed and shared time is unknown,
    and "n times one" never admits more than the proportional model did."""

    def __init__(self, initial_seconds: float, smoothing: float = 0.2, forgetting: float = 0.05, min_spread: float = 0.5,
                 quantile: float = 0.5):
        if not 0.0 < quantile < 1.0:
            raise ValueError("quantile must be in (0, 1)")
        self.per_request = initial_seconds  # the proportional model's seconds per request in flight
        self._smoothing, self._keep = smoothing, 1.0 - forgetting
        self._min_spread = min_spread
        self._w = self._wx = self._wy = self._wxx = self._wxy = 0.0
        self.fixed, self.shared = 0.0, initial_seconds  # a and b
        self._z = NormalDist().inv_cdf(quantile)
        self._relative_var = 0.0  # smoothed squared relative error of the model's predictions

    def record(self, seconds: float, in_flight: float) -> None:
        x = max(1.0, in_flight)
        error = seconds / self.seconds(x) - 1.0  # against what the model said before this sample
        self._relative_var += self._smoothing * (error * error - self._relative_var)
        self.per_request += self._smoothing * (seconds / x - self.per_request)
        k = self._keep
        self._w, self._wx, self._wy = k * self._w + 1.0, k * self._wx + x, k * self._wy + seconds
        self._wxx, self._wxy = k * self._wxx + x * x, k * self._wxy + x * seconds
        self.fixed, self.shared = 0.0, self.per_request
        mean_x = self._wx / self._w
        var_x = self._wxx / self._w - mean_x * mean_x
        if var_x < self._min_spread ** 2:
            return
        slope = (self._wxy / self._w - mean_x * self._wy / self._w) / var_x
        intercept = self._wy / self._w - slope * mean_x
        if slope > 0 and intercept >= 0:
            self.fixed, self.shared = intercept, slope

    def seconds(self, in_flight: float) -> float:
        """The mean seconds of one scoring with `in_flight` at once."""
        return self.fixed + self.shared * max(1.0, in_flight)

    @property
    def relative_spread(self) -> float:
        """How far recent scorings strayed from the model's prediction, relative to it (an RMS)."""
        return math.sqrt(self._relative_var)

    def planned_seconds(self, in_flight: float) -> float:
        """The seconds admission plans with: the quantile's, never less than the mean's."""
        return self.seconds(in_flight) * (1.0 + max(0.0, self._z) * self.relative_spread)


class LLMAdmission:
    def __init__(self, slots: int, max_waiting: int, initial_seconds: float = 1.0, smoothing: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, quantile: float = 0.5):
        if slots < 1 or max_waiting < 0 or initial_seconds <= 0:
            raise ValueError("slots >= 1, max_waiting >= 0 and initial_seconds > 0")
        self.slots, self.max_waiting = slots, max_waiting
        self.time_model = ScoringTimeModel(initial_seconds, smoothing, quantile=quantile)
        self._clock = clock
        self._scoring: dict[int, _Scoring] = {}
        self._ids = itertools.count()
        self._waiting = 0
        self._changed: asyncio.Condition | None = None  # made in the loop that first waits
        self._area = 0.0  # integral of the number in flight over time
        self._area_at = clock()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_use(self) -> int:
        return len(self._scoring)

    @property
    def unit_seconds(self) -> float:
        """One request's scoring alone, as the model now reads it."""
        return self.time_model.seconds(1)

    def expected_seconds(self, in_flight: int) -> float:
        return self.time_model.seconds(in_flight)

    def planned_seconds(self, in_flight: int) -> float:
        return self.time_model.planned_seconds(in_flight)

    def record(self, seconds: float, mean_in_flight: float = 1.0) -> None:
        """A finished scoring: `seconds` of wall time while `mean_in_flight` requests scored on average."""
        self.time_model.record(seconds, mean_in_flight)

    def fits(self, budget_left_s: float) -> bool:
        """Whether one more request can start now and it and every scoring one still meet their budgets."""
        if not self._scoring:
            return True
        n = len(self._scoring) + 1
        if n > self.slots or self.planned_seconds(n) > budget_left_s:
            return False
        now = self._clock()
        running = self.expected_seconds(len(self._scoring))
        for s in self._scoring.values():
            done = (now - s.started) / running  # the share of its work done so far, on average
            if now + max(0.0, 1.0 - done) * self.planned_seconds(n) > s.deadline:
                return False
        return True

    def _advance(self) -> None:
        now = self._clock()
        self._area += (now - self._area_at) * len(self._scoring)
        self._area_at = now

    @asynccontextmanager
    async def slot(self, budget_s: float) -> AsyncIterator[float]:
        """Hold a slot for the scoring; yields the budget left once it is held. The time the scoring
        took is recorded when the block ends without an exception."""
        arrived = self._clock()
        deadline = arrived + budget_s
        if self._waiting or not self.fits(budget_s):
            await self._wait_for_room(deadline)
        self._advance()
        key = next(self._ids)
        started = self._clock()
        self._scoring[key] = _Scoring(started, deadline, self._area)
        ok = False
        try:
            yield deadline - started
            ok = True
        finally:
            self._advance()
            run = self._scoring.pop(key)
            seconds = self._clock() - run.started
            if ok and seconds > 0:
                self.record(seconds, (self._area - run.area_at_start) / seconds)
            if self._changed is not None:
                async with self._changed:
                    self._changed.notify_all()

    async def _wait_for_room(self, deadline: float) -> None:
        """Wait in line while the budget still leaves time to score alone; else `Overloaded`."""
        give_up_in = deadline - self._clock() - self.unit_seconds
        if self._waiting >= self.max_waiting or give_up_in <= 0:
            raise Overloaded("overloaded", retry_after_s=self.expected_seconds(len(self._scoring)))
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._waiting += 1
        try:
            async with self._changed:
                async with asyncio.timeout(give_up_in):
                    await self._changed.wait_for(lambda: self.fits(deadline - self._clock()))
        except TimeoutError:
            raise Overloaded("overloaded", retry_after_s=self.expected_seconds(len(self._scoring))) from None
        finally:
            self._waiting -= 1
