"""Admission control: under overload the admitted requests finish in their budget and the others
are told at once, instead of every request waiting for the LLM and none getting an answer."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.gateway.admission import LLMAdmission, Overloaded

SCORING_S = 0.1  # what one request's LLM scoring takes in these tests


async def request(admission: LLMAdmission, budget_s: float) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        async with admission.slot(budget_s) as left_s:
            assert left_s <= budget_s
            await asyncio.sleep(SCORING_S)
            admission.record(SCORING_S)
        outcome = "answered"
    except Overloaded:
        outcome = "overloaded"
    return outcome, time.perf_counter() - started


def burst(admission: LLMAdmission, n: int, budget_s: float) -> list[tuple[str, float]]:
    async def go():
        return await asyncio.gather(*(request(admission, budget_s) for _ in range(n)))

    return asyncio.run(go())


def test_at_twice_the_capacity_the_capacity_is_still_answered_within_the_budget():
    admission = LLMAdmission(slots=2, max_waiting=2, initial_seconds=SCORING_S)
    budget = 0.35  # room for the running pair, one queued pair, not more
    results = burst(admission, 8, budget)
    answered = [s for o, s in results if o == "answered"]
    refused = [s for o, s in results if o == "overloaded"]
    assert len(answered) >= 4  # the slots and the bounded queue: 80%+ of what the capacity allows in the budget
    assert all(s <= budget + 0.05 for s in answered)
    assert refused and all(s < budget for s in refused)  # told at once or as soon as waiting cannot help


def test_without_contention_a_request_is_admitted_at_once():
    admission = LLMAdmission(slots=2, max_waiting=0)
    assert [o for o, _ in burst(admission, 2, 0.05)] == ["answered", "answered"]


def test_a_request_whose_budget_is_below_the_expected_scoring_time_does_not_queue():
    admission = LLMAdmission(slots=1, max_waiting=10, initial_seconds=1.0)
    outcomes = [o for o, _ in burst(admission, 2, 0.5)]
    assert sorted(outcomes) == ["answered", "overloaded"]


def test_slots_are_given_back_when_scoring_fails():
    admission = LLMAdmission(slots=1, max_waiting=0)

    async def go():
        with pytest.raises(RuntimeError):
            async with admission.slot(1.0):
                raise RuntimeError("the LLM failed")
        async with admission.slot(1.0):
            return admission.in_use

    assert asyncio.run(go()) == 1
