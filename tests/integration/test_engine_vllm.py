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


def test_batched_completions_give_the_chat_endpoints_logprobs(vllm_tiny, tiny_export):
    """With the model's chat template, a task's prompts go as one /v1/completions request; the
    rendering must be the tokenizer's and the answers the same as one chat request per prompt."""
    from transformers import AutoTokenizer

    from service.llm.chat_template import ChatTemplate
    from service.ranking.prompts import listwise_prompt, pairwise_prompt, pointwise_prompt

    template = ChatTemplate.from_model_dir(tiny_export)
    assert template is not None
    messages = [pointwise_prompt(USER, c, PromptConfig(max_liked=10, max_disliked=3), n_candidates=10).messages for c in CANDS[:4]]
    messages.append(pairwise_prompt(USER, CANDS[0], CANDS[1]).messages)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    for m in [*messages, listwise_prompt(USER, CANDS).messages]:
        assert template.render(m) == tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)

    async def both():
        settings = LLMSettings(base_url=vllm_tiny.base_url, model=vllm_tiny.served_name, timeout_s=120)
        plain, batched = VLLMClient(settings), VLLMClient(settings, template=template)
        try:
            return await plain.next_token_logprobs_many(messages), await batched.next_token_logprobs_many(messages)
        finally:
            await plain.aclose()
            await batched.aclose()

    one_by_one, in_one_request = asyncio.run(both())
    assert len(in_one_request) == len(messages)
    for a, b in zip(one_by_one, in_one_request, strict=True):
        top_a, top_b = max(a, key=a.get), max(b, key=b.get)
        assert top_a == top_b
        assert abs(a[top_a] - b[top_b]) < 0.05
