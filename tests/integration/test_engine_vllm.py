"""The ranking engine against a real vLLM server: every task score comes from logprobs, and a
malformed listwise answer is repaired and counted."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from service.llm.client import LLMSettings, VLLMClient
from service.ranking.engine import EngineConfig, RankingEngine
from service.ranking.fusion import fuse
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


async def _score(server, config: EngineConfig, **kw):
    client = VLLMClient(LLMSettings(base_url=server.base_url, model=server.served_name, timeout_s=120))
    try:
        return await RankingEngine(client, config).score(USER, CANDS, seed=7, **kw)
    finally:
        await client.aclose()


def test_all_three_task_scores_come_from_logprobs(vllm_tiny):
    result = asyncio.run(_score(vllm_tiny, EngineConfig(prompt=PromptConfig(max_liked=10, max_disliked=3))))
    assert result.dropped == {}
    point, pair, lst = (result.outcomes[t] for t in ("pointwise", "pairwise", "listwise"))
    assert point.prompts == 10 and pair.prompts == 10 and lst.prompts == 1
    ratings = [r for r in point.detail["expected_rating"] if r is not None]
    assert ratings and all(1.0 <= r <= 5.0 for r in ratings)
    # an expected rating is a probability-weighted mean, not a parsed digit
    assert any(abs(r - round(r)) > 1e-3 for r in ratings)
    assert all(p is None or 0.0 <= p <= 1.0 for _, _, pa, pb in pair.detail["pairs"] for p in (pa, pb))
    assert 0.0 < lst.detail["letter_mass"] <= 1.0 + 1e-6
    assert fuse(10, result.utilities).order == hybrid_order_by_hand(result.utilities)


def hybrid_order_by_hand(utilities) -> list[int]:
    """The paper's hybrid written out: each task min-max scaled within the list, a third of each
    summed, best first, ties in backbone order."""
    total = np.zeros(10)
    for u in utilities.values():
        u = np.asarray(u, dtype=float)
        span = u.max() - u.min()
        total += (1 / 3) * ((u - u.min()) / span if span > 0 else np.zeros(10))
    return sorted(range(10), key=lambda i: (-total[i], i))


def test_malformed_listwise_answer_is_repaired_and_counted(vllm_tiny):
    # One generated token cannot hold five letters: the answer is malformed by construction.
    config = EngineConfig(listwise_mode="generate", listwise_max_tokens=1)
    result = asyncio.run(_score(vllm_tiny, config, tasks=["listwise"]))
    lst = result.outcomes["listwise"]
    assert lst.error is None and lst.invalid_answers == 1
    named = [i for i in range(10) if lst.utility[i] > 0]
    assert 0 < len(named) < 10
    # the candidates the answer named, best first, then the rest in backbone order
    assert fuse(10, result.utilities).order == sorted(named, key=lambda i: -lst.utility[i]) + [i for i in range(10) if i not in named]


def test_one_request_per_task_sends_the_chat_endpoints_tokens_and_gets_the_same_answers(vllm_tiny, tiny_export):
    """With the model's chat template, a task's prompts go as one /v1/completions request: the
    rendering must be the tokenizer's, its tokens those vLLM's chat endpoint makes of the messages,
    and the answers those of one request per prompt, on the block layout the model was tuned on.
    (The test server runs in float32: the tiny model's answers are near uniform, and in bf16 its
    logprobs come in 0.125 steps, so batches of different shapes flipped tied top tokens.)"""
    import httpx
    from transformers import AutoTokenizer

    from service.llm.chat_template import ChatTemplate
    from service.llm.vllm_server import KV_BLOCK_TOKENS
    from service.ranking.prompts import listwise_prompt, pairwise_prompt, pointwise_prompt

    template = ChatTemplate.from_model_dir(tiny_export)
    assert template is not None
    messages = [pointwise_prompt(USER, c, PromptConfig(max_liked=10, max_disliked=3), n_candidates=10).messages for c in CANDS[:4]]
    messages.append(pairwise_prompt(USER, CANDS[0], CANDS[1]).messages)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    for m in [*messages, listwise_prompt(USER, CANDS).messages]:
        text = template.render(m)
        assert text == tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        tokens = [
            httpx.post(f"{vllm_tiny.base_url}/tokenize", json={"model": vllm_tiny.served_name, **body}, timeout=30).json()["tokens"]
            for body in ({"messages": m, "add_generation_prompt": True}, {"prompt": text, "add_special_tokens": False})
        ]
        assert tokens[0] == tokens[1]

    async def both():
        client = VLLMClient.for_model(LLMSettings(base_url=vllm_tiny.base_url, model=vllm_tiny.served_name, timeout_s=120), tiny_export, KV_BLOCK_TOKENS)
        try:
            one_by_one = [(await client.next_token_logprobs_many([m]))[0] for m in messages]
            return one_by_one, await client.next_token_logprobs_many(messages)
        finally:
            await client.aclose()

    one_by_one, in_one_request = asyncio.run(both())
    assert len(in_one_request) == len(messages)
    for a, b in zip(one_by_one, in_one_request, strict=True):
        top_a, top_b = max(a, key=a.get), max(b, key=b.get)
        assert top_a == top_b
        assert abs(a[top_a] - b[top_b]) < 0.05


def test_block_layout_leaves_each_later_prompt_of_a_task_only_its_tail_to_compute(vllm_tiny, tiny_export):
    """vLLM's own prefix-cache counters: with the prompts padded to KV blocks, a task's later
    prompts compute fewer tokens than laid out plainly (different users, so nothing is cached
    across the two runs)."""
    import httpx
    from transformers import AutoTokenizer

    from service.llm.vllm_server import KV_BLOCK_TOKENS
    from service.loadtest.llm_counters import parse_counters
    from service.ranking.prompts import pointwise_prompt
    from training.evaluation.evaluate import prompt_token_cost

    def counters():  # the bench's reading of the same counters (service.loadtest.llm_counters)
        return parse_counters(httpx.get(f"{vllm_tiny.base_url}/metrics", timeout=10).text)

    async def send(client: VLLMClient, user: UserProfile) -> None:
        try:
            first = [pointwise_prompt(user, CANDS[0], n_candidates=10).messages]
            await client.next_token_logprobs_many(first)  # the user block and question, cached
            await client.next_token_logprobs_many([pointwise_prompt(user, c, n_candidates=10).messages for c in CANDS[1:]])
        finally:
            await client.aclose()

    settings = LLMSettings(base_url=vllm_tiny.base_url, model=vllm_tiny.served_name, timeout_s=120)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    cost, predicted, sent, encoded = {}, {}, {}, {}
    for block in (0, KV_BLOCK_TOKENS):  # another user first, so the shared system message is cached for both runs alike
        asyncio.run(send(VLLMClient.for_model(settings, tiny_export, block), UserProfile(liked=USER.liked, disliked=USER.disliked, age=31, gender="M", occupation="writer")))
    for block, occupation in ((0, "doctor"), (KV_BLOCK_TOKENS, "lawyer")):
        user = UserProfile(liked=USER.liked, disliked=USER.disliked, age=44, gender="F", occupation=occupation)
        before = counters()
        asyncio.run(send(VLLMClient.for_model(settings, tiny_export, block), user))
        used = counters() - before
        cost[block], sent[block] = used.computed, used.prompt
        messages = [pointwise_prompt(user, c, n_candidates=10).messages for c in CANDS]
        tokens = prompt_token_cost(tokenizer, messages, block_size=KV_BLOCK_TOKENS, token_block=block)
        predicted[block], encoded[block] = tokens["with_reuse"], tokens["without_reuse"]
    assert cost[KV_BLOCK_TOKENS] < cost[0]
    # the tokens the bench reports as sent per user are the ones the prompts encode to, exactly
    assert sent == encoded
    # the cost model the README's token counts come from is what vLLM computes: the saving exactly,
    # the totals up to the system message's blocks, which earlier users' prompts left cached
    assert cost[0] - cost[KV_BLOCK_TOKENS] == pytest.approx(predicted[0] - predicted[KV_BLOCK_TOKENS], abs=10)
    assert all(0 <= predicted[b] - cost[b] <= 2 * KV_BLOCK_TOKENS for b in cost)


def test_generation_with_the_model_folder_sends_the_tuned_layout_and_returns_the_servers_text(vllm_tiny, tiny_export):
    """`listwise_mode="generate"` through the client built for the model: the prompt goes as one
    completions request, as the token ids training encodes for the tuned block layout (the user
    block's ids, newlines up to a 32-token boundary, then the question), and the answer is the
    text the server sent back."""
    import httpx
    from transformers import AutoTokenizer

    from service.llm.client import prompt_format_of
    from service.llm.prompt_tokens import PromptEncoder
    from service.ranking.prompts import QUESTION_HEADING, listwise_prompt

    messages = listwise_prompt(USER, CANDS).messages
    sent, received = [], []

    async def record_request(request):
        sent.append((request.url.path, json.loads(request.content)))

    async def record_response(response):
        await response.aread()
        received.append(response.json())

    async def run():
        template, encoder = prompt_format_of(tiny_export, 32)
        http = httpx.AsyncClient(base_url=vllm_tiny.base_url, timeout=120, event_hooks={"request": [record_request], "response": [record_response]})
        client = VLLMClient(LLMSettings(base_url=vllm_tiny.base_url, model=vllm_tiny.served_name, timeout_s=120), http=http, template=template, encoder=encoder)
        try:
            return await client.generate(messages, max_tokens=12)
        finally:
            await client.aclose()

    text = asyncio.run(run())
    [(path, body)] = sent
    assert path == "/v1/completions" and body["max_tokens"] == 12 and body["add_special_tokens"] is False
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert body["prompt"] == PromptEncoder.from_hf_tokenizer(tokenizer, 32).encode(rendered)  # what training tuned on
    user_block = tokenizer(rendered[:rendered.rfind(QUESTION_HEADING)], add_special_tokens=False)["input_ids"]
    boundary = -(-len(user_block) // 32) * 32
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert body["prompt"][:len(user_block)] == user_block and len(user_block) % 32 != 0
    assert body["prompt"][len(user_block):boundary] == newline * (boundary - len(user_block))
    assert text == received[0]["choices"][0]["text"]
