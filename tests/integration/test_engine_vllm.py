"""The ranking engine against a real vLLM server: every task score comes from logprobs, and a
malformed listwise answer is repaired and counted."""

from __future__ import annotations

import asyncio

from service.llm.client import LLMSettings, VLLMClient
from service.ranking.engine import EngineConfig, RankingEngine
from service.ranking.prompts import Candidate, PromptConfig, RatedItem, UserProfile

USER = UserProfile(
    liked=[RatedItem("Star Wars", 5), RatedItem("Fargo", 5), RatedItem("Toy Story", 4)],
    disliked=[RatedItem("Striptease", 1)],
    age=31,
    gender="M",
    occupation="engineer",
)
CANDS = [Candidate(t, backbone_rank=i + 1) for i, t in enumerate(
    ["Return of the Jedi", "Contact", "Scream", "Liar Liar", "Air Force One", "Evita", "Titanic", "Heat", "Babe", "Casablanca"]
)]


async def _rank(server, config: EngineConfig, **kw):
    client = VLLMClient(LLMSettings(base_url=server.base_url, model=server.served_name, timeout_s=120))
    try:
        return await RankingEngine(client, config).rank(USER, CANDS, seed=7, **kw)
    finally:
        await client.aclose()


def test_all_three_task_scores_come_from_logprobs(vllm_tiny):
    result = asyncio.run(_rank(vllm_tiny, EngineConfig(prompt=PromptConfig(max_liked=10, max_disliked=3))))
    assert result.dropped == {}
    point, pair, lst = (result.outcomes[t] for t in ("pointwise", "pairwise", "listwise"))
    assert point.prompts == 10 and pair.prompts == 10 and lst.prompts == 1
    ratings = [r for r in point.detail["expected_rating"] if r is not None]
    assert ratings and all(1.0 <= r <= 5.0 for r in ratings)
    # an expected rating is a probability-weighted mean, not a parsed digit
    assert any(abs(r - round(r)) > 1e-3 for r in ratings)
    assert all(p is None or 0.0 <= p <= 1.0 for _, _, pa, pb in pair.detail["pairs"] for p in (pa, pb))
    assert 0.0 < lst.detail["letter_mass"] <= 1.0 + 1e-6
    assert sorted(result.order) == list(range(10))


def test_malformed_listwise_answer_is_repaired_and_counted(vllm_tiny):
    # One generated token cannot hold five letters: the answer is malformed by construction.
    config = EngineConfig(listwise_mode="generate", listwise_max_tokens=1)
    result = asyncio.run(_rank(vllm_tiny, config, tasks=["listwise"]))
    lst = result.outcomes["listwise"]
    assert lst.error is None and lst.invalid_answers == 1
    assert sorted(result.order) == list(range(10))
    named = [i for i in range(10) if lst.utility[i] > 0]
    assert result.order[len(named):] == sorted(result.order[len(named):])  # the rest keep backbone order
