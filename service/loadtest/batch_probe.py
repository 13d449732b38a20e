"""Probe of the request layouts, on one bare vLLM server: a user's prompts as 21 chat requests,
as one `/v1/completions` request per task with the chat template rendered client-side, and the
same with the token ids padded to KV blocks (`service.llm.prompt_tokens`, what the gateway sends
for a model tuned on that layout). Speed does not depend on the weights: any model folder works.

Also prints the prompt tokens vLLM computed per user (prefix-cache queries minus hits), which
shows whether prefix caching reuses what `training.evaluation.evaluate.prompt_token_cost` says it can.
Usage: `.venv/bin/python -m service.loadtest.batch_probe [--model artifacts/ml-100k/model]`.
Needs the training extra (transformers renders the chat template).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import httpx

from service.gateway.serving_tables import read_serving_tables
from service.llm.prompt_tokens import PromptEncoder
from service.llm.vllm_server import KV_BLOCK_TOKENS, VLLMServer
from service.loadtest.llm_counters import parse_counters
from service.ranking.engine import task_prompts
from service.ranking.prompts import Candidate, PromptConfig, RatedItem, UserProfile
from service.ranking.tasks import TASKS


def user_prompts(titles: list[str], cfg: PromptConfig, seed: int, m: int = 10) -> dict[str, list[list[dict[str, str]]]]:
    rng = random.Random(seed)
    pick = rng.sample(titles, cfg.max_liked + cfg.max_disliked + m)
    liked, disliked, rest = pick[: cfg.max_liked], pick[cfg.max_liked : cfg.max_liked + cfg.max_disliked], pick[cfg.max_liked + cfg.max_disliked :]
    user = UserProfile(liked=[RatedItem(t, 5) for t in liked], disliked=[RatedItem(t, 1) for t in disliked], age=30, gender="F", occupation="writer")
    cands = [Candidate(t, i + 1) for i, t in enumerate(rest)]
    return {task: [p.messages for p in task_prompts(task, user, cands, cfg, seed)] for task in TASKS}


async def probe(model: Path, users: int, in_flight: int) -> None:
    from transformers import AutoTokenizer

    titles = [it["title"] for it in read_serving_tables(Path("artifacts/ml-100k/serving")).items]
    tokenizer = AutoTokenizer.from_pretrained(model)
    cfg = PromptConfig(max_liked=10, max_disliked=3)
    with VLLMServer(model, log_file=Path(".cache/vllm/batch_probe.log")) as server:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300, limits=limits) as http:

            async def computed_tokens() -> float:
                return parse_counters((await http.get("/metrics")).text).computed

            async def chat(messages) -> None:
                body = {"model": server.served_name, "messages": messages, "max_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0}
                (await http.post("/v1/chat/completions", json=body)).raise_for_status()

            async def batch(messages_list, block: int = 0) -> None:
                encoder = PromptEncoder.from_hf_tokenizer(tokenizer, block)
                prompts = [encoder.encode(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)) for m in messages_list]
                body = {"model": server.served_name, "prompt": prompts, "max_tokens": 1, "logprobs": 20, "temperature": 0}
                resp = await http.post("/v1/completions", json=body)
                resp.raise_for_status()
                assert len(resp.json()["choices"]) == len(prompts)

            async def per_prompt(seed: int) -> None:
                p = user_prompts(titles, cfg, seed)
                await asyncio.gather(*(chat(m) for task in p.values() for m in task))

            async def per_task(seed: int) -> None:
                p = user_prompts(titles, cfg, seed)
                await asyncio.gather(*(batch(task) for task in p.values()))

            async def per_task_blocks(seed: int) -> None:
                p = user_prompts(titles, cfg, seed)
                await asyncio.gather(*(batch(task, KV_BLOCK_TOKENS) for task in p.values()))

            slots = asyncio.Semaphore(in_flight)
            rounds = [("warm-up", per_prompt, 10_000)]
            for r in range(2):
                rounds += [("chat per prompt", per_prompt, 4_000 * r), ("completions per task", per_task, 4_000 * r + 1_000), ("per task, block layout", per_task_blocks, 4_000 * r + 2_000)]
            for name, run, first_seed in rounds:
                before, start = await computed_tokens(), time.perf_counter()

                async def one(seed: int, run=run) -> None:
                    async with slots:
                        await run(seed)

                await asyncio.gather(*(one(first_seed + i) for i in range(users)))
                elapsed = time.perf_counter() - start
                print(f"{name:22s} {users / elapsed:.3f} users/s, {(await computed_tokens() - before) / users:.0f} prompt tokens computed per user", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/ml-100k/model"))
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(probe(args.model, args.users, args.in_flight))


if __name__ == "__main__":
    main()
