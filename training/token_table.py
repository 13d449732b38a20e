"""Prompt tokens per reranked user, by history length, candidate count and layout: what the README's
token table shows. `.venv/bin/python -m training.token_table [--users 20]`.

Real ML-100K users (their histories as the gateway builds them) with random candidates; counts from
`training.evaluate.prompt_token_cost` with the embedded model's tokenizer: each prompt in full, with
ideal prefix reuse, and with vLLM's 32-token blocks, for the plain and the block-aligned layout.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from service.gateway.store import InteractionStore
from service.llm.vllm_server import KV_BLOCK_TOKENS
from service.ranking.engine import task_prompts
from service.ranking.profile import build_profile
from service.ranking.prompts import Candidate, PromptConfig
from service.ranking.tasks import TASKS
from training.base_model import ensure_base_model
from training.data import load_dataset
from training.evaluate import prompt_token_cost


def user_messages(profile, cands: list[Candidate], cfg: PromptConfig) -> list[list[dict[str, str]]]:
    """The 2m+1 prompts the hybrid sends for one user, in the engine's order."""
    return [p.messages for task in TASKS for p in task_prompts(task, profile, cands, cfg, seed=1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=Path(".cache"))
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(args.cache))
    store = InteractionStore.from_dataset(load_dataset("ml-100k", cache_dir=args.cache))
    rng = random.Random(0)
    users = rng.sample(sorted(store.users), args.users)
    items = list(store.items)
    table = Table(title=f"prompt tokens per user (mean of {args.users} ML-100K users)")
    for col in ("history (liked / disliked)", "m", "layout", "each prompt in full", "ideal reuse", f"{KV_BLOCK_TOKENS}-token blocks"):
        table.add_column(col, justify="right")
    for liked, disliked in ((10, 3), (50, 10)):
        for m in (10, 20):
            cfg = PromptConfig(max_liked=liked, max_disliked=disliked)
            counts: dict[int, list[tuple[int, int, int]]] = {0: [], KV_BLOCK_TOKENS: []}
            for user in users:
                profile = build_profile(store.history(user), store.liked_at_least, store.disliked_at_most, store.demographics(user))
                cands = [Candidate(store.items[i].title, r + 1) for r, i in enumerate(rng.sample(items, m))]
                msgs = user_messages(profile, cands, cfg)
                for layout in counts:
                    ideal = prompt_token_cost(tokenizer, msgs, 1, layout)
                    blocks = prompt_token_cost(tokenizer, msgs, KV_BLOCK_TOKENS, layout)
                    counts[layout].append((ideal["without_reuse"], ideal["with_reuse"], blocks["with_reuse"]))
            for layout, rows in counts.items():
                full, ideal, blocks = np.mean(rows, axis=0)
                name = f"padded to {layout}" if layout else "plain"
                table.add_row(f"{liked} / {disliked}", str(m), name, f"{full:,.0f}", f"{ideal:,.0f}", f"{blocks:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
