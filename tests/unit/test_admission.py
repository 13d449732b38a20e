"""Admission control: under overload the admitted requests finish in their budget and the others
are told at once, instead of every request waiting for the LLM and none getting an answer.

`SharedServer` stands in for an LLM server on a few CPU cores: it shares its time between the
requests it scores, so n at once each take n times as long as one alone. `BatchingServer` adds a
part each request spends on its own whatever the load (as a batching server's per-step overhead),
so n at once take a + b * n: less than n times one.

Everything runs on a virtual clock (aiotools' VirtualClock: the event loop's time and sleeps, and the
admission's clock): a sleep returns at once and advances the clock by exactly its length, so every
duration below is the same number on any machine under any load, and the bounds are exact."""

from __future__ import annotations

import asyncio

import pytest
from aiotools import VirtualClock

from service.gateway.admission import LLMAdmission, Overloaded, ScoringTimeModel

SCORING_S = 0.1  # one request's scoring alone


class SharedServer:
    def __init__(self, work_s: float = SCORING_S):
        self.work_s = work_s
        self.active = 0

    async def score(self) -> None:
        left, step = self.work_s, 0.005
        self.active += 1
        try:
            while left > 0:
                await asyncio.sleep(step)
                left -= step / self.active
        finally:
            self.active -= 1


class BatchingServer(SharedServer):
    def __init__(self, fixed_s: float, work_s: float):
        super().__init__(work_s)
        self.fixed_s = fixed_s

    async def score(self) -> None:
        await asyncio.sleep(self.fixed_s)
        await super().score()


EPS = 1e-9  # float sums of the servers' 5 ms steps


def on_virtual_time(**kwargs) -> LLMAdmission:
    """An admission whose clock is the virtual one its requests will run on."""
    clock = VirtualClock()
    admission = LLMAdmission(clock=clock.virtual_time, **kwargs)
    admission.virtual_clock = clock
    return admission


def run(admission: LLMAdmission, coro_fn):
    async def go():
        with admission.virtual_clock.patch_loop():
            return await coro_fn()

    return asyncio.run(go())


async def request(admission: LLMAdmission, server: SharedServer, budget_s: float) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with admission.slot(budget_s) as left_s:
            assert left_s <= budget_s + EPS
            await server.score()
        outcome = "answered"
    except Overloaded:
        outcome = "overloaded"
    return outcome, loop.time() - started


def burst(admission: LLMAdmission, n: int, budget_s: float, server: SharedServer | None = None) -> list[tuple[str, float]]:
    server = server or SharedServer()

    async def go():
        return await asyncio.gather(*(request(admission, server, budget_s) for _ in range(n)))

    return run(admission, go)


def test_at_twice_the_capacity_the_capacity_is_still_answered_within_the_budget():
    admission = on_virtual_time(slots=2, max_waiting=2, initial_seconds=SCORING_S)
    budget = 0.5  # room for the running pair, one queued pair, not more
    results = burst(admission, 8, budget)
    answered = [s for o, s in results if o == "answered"]
    refused = [s for o, s in results if o == "overloaded"]
    assert len(answered) >= 4  # the slots and the bounded queue
    assert all(s <= budget + EPS for s in answered)
    assert refused and all(s < budget for s in refused)  # told at once or as soon as waiting cannot help


def test_when_several_at_once_would_all_miss_the_deadline_fewer_are_scored_and_they_meet_it():
    # 4 slots, but 4 at once would take 0.4 s each against a 0.25 s budget: every one would miss it
    admission = on_virtual_time(slots=4, max_waiting=4, initial_seconds=SCORING_S)
    results = burst(admission, 8, 0.25)
    answered = [s for o, s in results if o == "answered"]
    assert len(answered) == 2  # two at once take 0.2 s; a third would not fit
    assert all(s <= 0.25 + EPS for s in answered)


def test_the_scoring_time_is_learned_from_what_the_server_does():
    admission = on_virtual_time(slots=4, max_waiting=0, initial_seconds=0.01)  # far too optimistic at first
    server = SharedServer(work_s=0.1)
    for _ in range(6):
        burst(admission, 4, 1.0, server)
    assert admission.unit_seconds == pytest.approx(0.1, rel=0.25)
    results = burst(admission, 8, 0.25, server)
    answered = [s for o, s in results if o == "answered"]
    assert answered and all(s <= 0.25 + EPS for s in answered)


def test_a_request_is_always_admitted_when_nothing_is_scoring():
    # the estimate says nothing fits, but only a scoring can correct it
    admission = on_virtual_time(slots=2, max_waiting=0, initial_seconds=10.0)
    assert [o for o, _ in burst(admission, 1, 0.5)] == ["answered"]
    assert admission.unit_seconds < 10.0


def test_without_contention_a_request_is_admitted_at_once():
    admission = on_virtual_time(slots=2, max_waiting=0, initial_seconds=0.01)
    assert [o for o, _ in burst(admission, 2, 0.5)] == ["answered", "answered"]


def test_a_request_whose_budget_is_below_the_expected_scoring_time_does_not_queue():
    admission = on_virtual_time(slots=1, max_waiting=10, initial_seconds=1.0)
    results = burst(admission, 2, 0.5)
    assert sorted(o for o, _ in results) == ["answered", "overloaded"]
    assert min(s for _, s in results) == 0.0  # told at once, not after waiting


def test_a_new_request_is_not_admitted_when_it_would_make_a_scoring_one_miss_its_deadline():
    admission = on_virtual_time(slots=4, max_waiting=0, initial_seconds=SCORING_S)

    async def go():
        server = SharedServer()
        first = asyncio.create_task(request(admission, server, 0.12))  # alone it just fits
        await asyncio.sleep(0.01)
        second = await request(admission, server, 10.0)  # room for it, but the first would then miss
        return await first, second

    first, second = run(admission, go)
    assert first[0] == "answered" and first[1] <= 0.12 + EPS
    assert second[0] == "overloaded"


def test_slots_are_given_back_when_scoring_fails():
    admission = on_virtual_time(slots=1, max_waiting=0)

    async def go():
        with pytest.raises(RuntimeError):
            async with admission.slot(1.0):
                raise RuntimeError("the LLM failed")
        async with admission.slot(1.0):
            return admission.in_use

    assert run(admission, go) == 1


def test_the_time_model_separates_the_fixed_part_from_the_shared_part():
    model = ScoringTimeModel(initial_seconds=1.0)
    for _ in range(5):
        for n in (1, 2, 3, 4):
            model.record(0.5 + 0.25 * n, n)
    assert model.fixed == pytest.approx(0.5, abs=0.01)
    assert model.shared == pytest.approx(0.25, abs=0.01)
    assert model.seconds(4) == pytest.approx(1.5, abs=0.02)


def test_with_one_level_of_concurrency_seen_the_time_model_assumes_n_times_one():
    # nothing tells the fixed part from the shared one yet, and n times one is the cautious reading
    model = ScoringTimeModel(initial_seconds=1.0)
    for _ in range(30):
        model.record(0.75, 1.0)
    assert model.fixed == 0.0
    assert model.seconds(4) == pytest.approx(4 * 0.75, rel=0.01)


def test_a_fit_that_is_not_physical_falls_back_to_n_times_one():
    model = ScoringTimeModel(initial_seconds=1.0)
    for _ in range(5):
        for n in (1, 2, 3, 4):
            model.record(0.4 * n - 0.2, n)  # would need a negative fixed part
    assert model.fixed == 0.0
    assert model.seconds(2) == pytest.approx(2 * model.per_request)


def test_a_batching_server_is_given_as_many_at_once_as_its_deadline_has_room_for():
    # alone 0.13 s, four at once 0.22 s: "n times one" would admit two (0.26 s) against a 0.3 s
    # budget, the learned a + b * n admits four
    server = BatchingServer(fixed_s=0.1, work_s=0.03)
    admission = on_virtual_time(slots=4, max_waiting=0, initial_seconds=0.13)
    for n in (1, 2, 3, 4, 1, 2, 3, 4, 2, 4):
        burst(admission, n, 5.0, server)
    assert admission.time_model.fixed == pytest.approx(0.1, abs=0.04)
    results = burst(admission, 8, 0.3, server)
    answered = [s for o, s in results if o == "answered"]
    assert len(answered) == 4
    assert all(s <= 0.3 + EPS for s in answered)


def test_at_the_median_admission_plans_with_the_mean_scoring_time():
    model = ScoringTimeModel(initial_seconds=1.0)
    for seconds in (0.6, 1.4) * 20:
        model.record(seconds, 1.0)
    assert model.planned_seconds(2) == model.seconds(2)


def test_a_high_quantile_plans_with_more_than_the_mean_when_scoring_times_vary():
    steady, noisy = ScoringTimeModel(1.0, quantile=0.95), ScoringTimeModel(1.0, quantile=0.95)
    for seconds in (0.6, 1.4) * 20:
        steady.record(1.0, 1.0)
        noisy.record(seconds, 1.0)
    assert steady.planned_seconds(1) == pytest.approx(steady.seconds(1), rel=0.01)  # no spread, no margin
    # scorings 40% either side of the mean: the 95% plan is well above the mean, and no more than
    # its normal quantile would give for a spread of that size
    assert 1.3 * noisy.seconds(1) < noisy.planned_seconds(1) < (1 + 1.645 * 0.6) * noisy.seconds(1)


def test_planning_with_a_high_quantile_admits_fewer_at_once():
    # the mean says two at once fit a 0.28 s budget (0.1 s each alone); scorings vary by half of that,
    # so planning for the 90% quantile scores them one at a time
    def admitted(quantile: float) -> int:
        admission = on_virtual_time(slots=4, max_waiting=0, initial_seconds=SCORING_S, quantile=quantile)
        for seconds in (0.05, 0.15) * 10:
            admission.record(seconds, 1.0)
        return sum(o == "answered" for o, _ in burst(admission, 4, 0.28))

    assert admitted(0.5) == 2
    assert admitted(0.9) == 1


def test_the_quantile_must_lie_strictly_between_zero_and_one():
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            ScoringTimeModel(1.0, quantile=bad)


# -- the constructor, the refusal's Retry-After, waiters ------------------------------------------


@pytest.mark.parametrize("settings", [{"slots": 0, "max_waiting": 1}, {"slots": 1, "max_waiting": -1}, {"slots": 1, "max_waiting": 1, "initial_seconds": 0.0}],
                         ids=["no_slot", "negative_queue", "no_scoring_time"])
def test_admission_refuses_settings_under_which_it_could_never_admit_or_estimate(settings):
    with pytest.raises(ValueError):
        LLMAdmission(**settings)


def test_admission_without_a_waiting_room_is_a_valid_setting():
    assert LLMAdmission(slots=1, max_waiting=0).max_waiting == 0


def test_a_refusal_says_to_retry_after_the_expected_scoring_time_of_those_in_flight():
    admission = on_virtual_time(slots=2, max_waiting=0, initial_seconds=1.0)
    for _ in range(5):
        for n in (1, 2, 3, 4):
            admission.record(0.5 + 0.25 * n, n)  # learned: a = 0.5 s fixed, b = 0.25 s per request in flight

    async def go():
        server = SharedServer(work_s=10.0)
        scoring = [asyncio.create_task(request(admission, server, 60.0)) for _ in range(2)]
        await asyncio.sleep(0.01)
        try:
            async with admission.slot(60.0):
                pytest.fail("a third request was admitted past two slots")
        except Overloaded as exc:
            refused = exc
        await asyncio.gather(*scoring)
        return refused

    refused = run(admission, go)
    assert refused.retry_after_s == pytest.approx(0.5 + 0.25 * 2)  # two in flight: a + 2b


def test_a_waiter_gives_up_when_its_budget_no_longer_leaves_time_to_score_alone():
    # the slot is busy for 1 s; a 0.5 s budget can wait 0.5 - 0.1 (its own scoring alone) = 0.4 s
    admission = on_virtual_time(slots=1, max_waiting=1, initial_seconds=SCORING_S)

    async def go():
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(request(admission, SharedServer(work_s=1.0), 10.0))
        await asyncio.sleep(0)
        arrived = loop.time()
        try:
            async with admission.slot(0.5):
                pytest.fail("admitted although the slot stays busy past its budget")
        except Overloaded as exc:
            gave_up = (loop.time() - arrived, exc.retry_after_s, admission.waiting)
        await busy
        return gave_up

    waited, retry_after_s, still_waiting = run(admission, go)
    assert waited == pytest.approx(0.4)
    assert retry_after_s == pytest.approx(SCORING_S)  # one scoring in flight, as the model reads it
    assert still_waiting == 0


def test_with_the_waiting_room_full_an_arrival_is_refused_at_once_even_when_a_slot_would_fit_it():
    # two slots; `tight` cannot share (two at once take 0.2 s, it has 0.15 s), so it takes the one
    # waiting place; `roomy` would fit beside the first, but it arrives behind a full waiting room
    admission = on_virtual_time(slots=2, max_waiting=1, initial_seconds=SCORING_S)

    async def go():
        server = SharedServer()
        first = asyncio.create_task(request(admission, server, 10.0))
        await asyncio.sleep(0)
        tight = asyncio.create_task(request(admission, server, 0.15))
        await asyncio.sleep(0.01)
        waiting_when_roomy_came = admission.waiting
        roomy = await request(admission, server, 10.0)
        return waiting_when_roomy_came, roomy, await tight, await first

    waiting, roomy, tight, first = run(admission, go)
    assert waiting == 1
    assert roomy == ("overloaded", 0.0)  # refused on arrival, not admitted ahead of the waiter
    assert tight[0] == "overloaded" and tight[1] == pytest.approx(0.05)  # 0.15 - 0.1 to score alone
    assert first[0] == "answered"
