"""The ranking engine against a scripted LLM: prompts go out concurrently, answers are scored from
logprobs, malformed answers are repaired and counted, and late or failing tasks are dropped. The
engine returns task utilities; the order is `fuse`'s, as the gateway and evaluation take it."""

from __future__ import annotations

import asyncio
import math

import pytest
from aiotools import VirtualClock

from service.llm.client import LLMError
from service.ranking.engine import EngineConfig, RankingEngine, disjoint_pairs, task_prompts
from service.ranking.fusion import fuse
from service.ranking.prompts import Candidate, RatedItem, UserProfile

USER = UserProfile(liked=[RatedItem("Heat", 5), RatedItem("Babe", 4)], disliked=[RatedItem("Striptease", 1)])
CANDS = [Candidate(f"Film {i}", backbone_rank=i + 1) for i in range(6)]


class ScriptedLLM:
    """Answers as a model that loves 'Film 5' and dislikes 'Film 0' would; records concurrency."""

    def __init__(self, listwise_text="F, A, B, C, D", delay=0.0, fail=False, pointwise_garbage=False):
        self.listwise_text, self.delay, self.fail, self.pointwise_garbage = listwise_text, delay, fail, pointwise_garbage
        self.in_flight = self.max_in_flight = 0

    async def _enter(self):
        if self.fail:
            raise LLMError("connection refused")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1

    async def next_token_logprobs(self, messages):
        await self._enter()
        question = messages[-1]["content"].rsplit("## Question", 1)[1]
        if "Answer Yes or No" in question:
            a = question.split('A: "')[1].split('"')[0]
            yes = 0.9 if a == "Film 5" else 0.1 if a == "Film 0" else 0.5
            return {"Yes": math.log(yes), "No": math.log(1 - yes)}
        if "letters separated by commas" in question:
            return {"F": math.log(0.6), "A": math.log(0.3), "Sure": math.log(0.1)}
        if self.pointwise_garbage:
            return {"The": -0.1, "I": -2.5}
        title = question.split('"')[1]
        return {"5": -0.05, "4": -3.0} if title == "Film 5" else {"1": -0.05, "2": -3.0} if title == "Film 0" else {"3": -0.1, "4": -2.4}

    async def generate(self, messages, max_tokens=16, **extra):
        await self._enter()
        return self.listwise_text


def run(coro):
    return asyncio.run(coro)


def order_of(result) -> list[int]:
    return fuse(len(CANDS), result.utilities).order


def test_every_task_is_scored_from_logprobs_and_the_fusion_moves_the_liked_item_up():
    llm = ScriptedLLM()
    result = run(RankingEngine(llm).score(USER, CANDS, seed=1))
    assert set(result.utilities) == {"pointwise", "pairwise", "listwise"}
    point = result.outcomes["pointwise"]
    assert point.prompts == 6 and point.invalid_answers == 0
    assert point.detail["expected_rating"][5] == pytest.approx((5 * math.exp(-0.05) + 4 * math.exp(-3.0)) / (math.exp(-0.05) + math.exp(-3.0)), abs=1e-3)
    assert result.outcomes["pairwise"].prompts == 6  # 3 disjoint pairs, both orders
    assert order_of(result)[0] == 5 and order_of(result)[-1] == 0
    assert llm.max_in_flight > 6  # prompts of all tasks were in flight together


def test_listwise_scores_are_the_first_letter_probabilities_over_the_candidates():
    result = run(RankingEngine(ScriptedLLM()).score(USER, CANDS, tasks=["listwise"]))
    assert result.outcomes["listwise"].utility.tolist() == pytest.approx([1 / 3, 0, 0, 0, 0, 2 / 3])
    assert order_of(result) == [5, 0, 1, 2, 3, 4]


def test_malformed_generated_listwise_answer_is_repaired_and_counted():
    engine = RankingEngine(ScriptedLLM(listwise_text="I think F then F, Z"), EngineConfig(listwise_mode="generate"))
    result = run(engine.score(USER, CANDS))
    listwise = result.outcomes["listwise"]
    assert listwise.invalid_answers == 1
    # only F (candidate 5) was usable: it gets m - 0 = 6, the rest 0 and keep backbone order
    assert listwise.utility.tolist() == [0, 0, 0, 0, 0, 6]


def test_off_format_pointwise_answers_fall_back_to_backbone_order_and_are_counted():
    result = run(RankingEngine(ScriptedLLM(pointwise_garbage=True)).score(USER, CANDS, tasks=["pointwise"]))
    point = result.outcomes["pointwise"]
    assert point.invalid_answers == 6
    assert order_of(result) == [0, 1, 2, 3, 4, 5]


def test_tasks_that_miss_the_deadline_are_dropped_at_the_deadline_not_waited_for():
    llm = ScriptedLLM(delay=60.0)
    result, seconds = on_virtual_time(RankingEngine(llm).score(USER, CANDS, deadline_s=0.2))
    assert seconds == pytest.approx(0.2)  # the 60 s answers were not waited for
    assert result.dropped == {"pointwise": "deadline", "pairwise": "deadline", "listwise": "deadline"}
    assert result.utilities == {}
    assert order_of(result) == [0, 1, 2, 3, 4, 5]  # backbone order when nothing came back


def test_llm_errors_drop_the_task_with_the_reason():
    result = run(RankingEngine(ScriptedLLM(fail=True)).score(USER, CANDS, tasks=["pairwise"]))
    assert result.dropped == {"pairwise": "LLMError: connection refused"}
    assert order_of(result) == list(range(6))


def test_only_the_tasks_asked_for_are_scored():
    llm = ScriptedLLM()
    result = run(RankingEngine(llm).score(USER, CANDS, tasks=["pointwise", "listwise"]))
    assert set(result.outcomes) == set(result.utilities) == {"pointwise", "listwise"}
    fused = fuse(len(CANDS), result.utilities, weights={"pointwise": 1.0, "pairwise": 0.0, "listwise": 0.0})
    assert fused.order[0] == 5 and fused.order[-1] == 0


def test_pairs_are_disjoint_and_deterministic_per_seed():
    pairs = disjoint_pairs(7, seed=3)
    flat = [i for p in pairs for i in p]
    assert len(pairs) == 3 and len(set(flat)) == 6
    assert pairs == disjoint_pairs(7, seed=3)


def on_virtual_time(coro):
    """(the result, the seconds it took) on a virtual clock: the LLM's sleeps and the deadline
    advance it exactly, whatever the machine's load."""

    async def go():
        loop = asyncio.get_running_loop()
        with VirtualClock().patch_loop():
            start = loop.time()
            result = await coro
            return result, loop.time() - start

    return asyncio.run(go())


def test_task_prompts_are_the_prompts_the_engine_sends():
    """The probes and token counts build a user's prompts with `task_prompts`: they must be what
    `score` sends, task by task."""

    class Recording(ScriptedLLM):
        def __init__(self):
            super().__init__()
            self.sent: list = []

        async def next_token_logprobs(self, messages):
            self.sent.append(messages)
            return await super().next_token_logprobs(messages)

    config = EngineConfig()
    for task in ("pointwise", "pairwise", "listwise"):
        llm = Recording()
        run(RankingEngine(llm, config).score(USER, CANDS, seed=3, tasks=[task]))
        assert llm.sent == [p.messages for p in task_prompts(task, USER, CANDS, config.prompt, seed=3)]
