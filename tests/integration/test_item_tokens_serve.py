"""A tiny tuning run with collaborative item tokens: its export carries the tokens and their rows,
a real vLLM (CPU) server serves it as plain token ids, and the ranking engine scores all three
tasks from it, naming an item added after the export by its title alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from service.llm.client import LLMSettings, VLLMClient
from service.llm.prompt_tokens import PromptEncoder
from service.llm.vllm_server import VLLMServer
from service.ranking.engine import EngineConfig, RankingEngine, task_prompts
from service.ranking.item_tokens import ItemTokenTable, prompt_config_of_model
from service.ranking.prompts import Candidate, RatedItem, UserProfile
from service.ranking.tasks import TASKS
from tests.conftest import CACHE
from training.evaluation.quality_report import variant_of
from training.tuning.instructions import read_jsonl

LATE = Candidate("A Film Added After The Export (2031)", item_id="99999")  # in no token table


@pytest.fixture(scope="module")
def vllm_item_tokens(tiny_item_tokens_export, tmp_path_factory):
    with VLLMServer(tiny_item_tokens_export, dtype="float32", cache_dir=CACHE / "vllm", log_file=tmp_path_factory.mktemp("vllm") / "vllm.log") as server:
        yield server


@pytest.fixture(scope="module")
def request_parts(tiny_item_tokens_export, ml100k):
    """A real ML-100K user's liked items and ten candidates the model has tokens for, plus one it
    has none for, and the prompt config the model was tuned with (its token table attached)."""
    manifest = json.loads((tiny_item_tokens_export / "manifest.json").read_text())
    cfg = prompt_config_of_model(tiny_item_tokens_export, manifest["prompt_config"])
    known = [it for it in ml100k.items if it.item_id in cfg.token_table]
    user = UserProfile(liked=[RatedItem(it.title, 5, it.item_id) for it in known[:5]], disliked=[RatedItem(known[5].title, 1, known[5].item_id)])
    cands = [Candidate(it.title, r + 1, it.item_id) for r, it in enumerate(known[10:19])]
    cands.append(Candidate(LATE.title, 10, LATE.item_id))
    return manifest, cfg, user, cands


def test_the_manifest_records_the_item_token_mode_and_the_rows_written(tiny_item_tokens_export):
    manifest = json.loads((tiny_item_tokens_export / "manifest.json").read_text())
    assert manifest["prompt_config"]["item_tokens"] == "beside" and manifest["item_vectors"] == "real"
    assert variant_of(manifest) == "item_tokens"
    table = ItemTokenTable.from_tokenizer_file(tiny_item_tokens_export / "tokenizer.json")
    rows = manifest["item_token_rows"]
    assert rows["count"] == len(table) > 1000 and rows["vectors"] == "real"
    config = json.loads((tiny_item_tokens_export / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == rows["last_token_id"] + 1
    train = read_jsonl(Path(manifest["instruction_set"]) / "train.jsonl")
    assert all("<item:" in r["prompt"][1]["content"] for r in train)


class RecordingLLM:
    """The real client, keeping every answer it returns."""

    def __init__(self, client: VLLMClient):
        self.client, self.answers = client, []

    async def next_token_logprobs_many(self, messages_list):
        out = await self.client.next_token_logprobs_many(messages_list)
        self.answers += out
        return out

    async def next_token_logprobs(self, messages):
        return (await self.next_token_logprobs_many([messages]))[0]

    async def generate(self, messages, max_tokens=16, **extra):
        return await self.client.generate(messages, max_tokens, **extra)


def test_the_engine_scores_all_three_tasks_from_the_served_item_token_model(vllm_item_tokens, tiny_item_tokens_export, request_parts):
    _, cfg, user, cands = request_parts

    async def run():
        client = VLLMClient.for_model(LLMSettings(base_url=vllm_item_tokens.base_url, model=vllm_item_tokens.served_name, timeout_s=120),
                                      tiny_item_tokens_export, cfg.token_block)
        llm = RecordingLLM(client)
        try:
            return await RankingEngine(llm, EngineConfig(prompt=cfg)).score(user, cands, seed=3), llm.answers
        finally:
            await client.aclose()

    result, answers = asyncio.run(run())
    assert result.dropped == {} and all(len(u) == 10 for u in result.utilities.values())
    assert {t: o.invalid_answers for t, o in result.outcomes.items()} == {t: 0 for t in TASKS}
    assert len(answers) == 10 + 10 + 1
    # the top-20 next tokens of every prompt are words: no item token crowds out the answers
    assert not any(token.strip().startswith("<item:") for answer in answers for token in answer)
    # the late item is named by its title alone, the others by token and title
    listwise = task_prompts("listwise", user, cands, cfg)[0].messages[1]["content"]
    assert f"{cfg.token_table[cands[0].item_id]} {cands[0].title}" in listwise
    assert f". {LATE.title}\n" in listwise and "<item:99999>" not in listwise


def test_vllm_reads_the_exported_item_rows_as_transformers_does(vllm_item_tokens, tiny_item_tokens_export, request_parts):
    """The same token ids through vLLM and through transformers on the export give the same next
    token distribution: the served model embeds item tokens from the rows the export wrote."""
    manifest, cfg, user, cands = request_parts
    tokenizer = AutoTokenizer.from_pretrained(tiny_item_tokens_export)
    messages = task_prompts("pointwise", user, cands, cfg)[0].messages
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = PromptEncoder.from_model_dir(tiny_item_tokens_export, cfg.token_block).encode(text)
    item_ids = set(tokenizer.convert_tokens_to_ids(list(cfg.token_table.values())))
    assert sum(i in item_ids for i in ids) == len(user.liked) + len(user.disliked) + 1  # one id per item named
    resp = httpx.post(f"{vllm_item_tokens.base_url}/v1/completions", timeout=120, json={
        "model": vllm_item_tokens.served_name, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 5, "add_special_tokens": False})
    assert resp.status_code == 200, resp.text
    served = resp.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    model = AutoModelForCausalLM.from_pretrained(tiny_item_tokens_export, dtype=torch.float32)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    for token, value in served.items():
        assert value == pytest.approx(float(logprobs[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(token))[0]]), abs=2e-3)
    assert float(logprobs[sorted(item_ids)].exp().sum()) < 1e-6  # item tokens take no probability mass
