"""Prompt tokens per reranked user, by history length, candidate count and layout: what the README's
token table shows. `.venv/bin/python -m training.evaluation.token_table [--users 20]`.

Real ML-100K users (their histories as the gateway builds them) with random candidates; counts from
`training.evaluation.evaluate.prompt_token_cost` with the embedded model's tokenizer: each prompt in full, with
ideal prefix reuse, and with vLLM's 32-token blocks, for the plain and the block-aligned layout,
and on the block-aligned layout with collaborative item tokens (every catalogue item given one, as a
model tuned with them has for the items its hint backbone saw) beside the titles or instead of them.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from service.gateway.store import InteractionStore
from service.llm.vllm_server import KV_BLOCK_TOKENS
from service.ranking.engine import task_prompts
from service.ranking.item_tokens import ItemTokenTable, item_token
from service.ranking.profile import build_profile
from service.ranking.prompts import Candidate, PromptConfig
from service.ranking.tasks import TASKS
from training.data import load_dataset
from training.data.serving_export import write_serving_tables
from training.evaluation.evaluate import prompt_token_cost
from training.tuning.base_model import ensure_base_model
from training.tuning.item_tokens import add_item_tokens


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
    with tempfile.TemporaryDirectory() as folder:  # the store reads the serving tables, as the gateway does
        store = InteractionStore.from_folder(write_serving_tables(load_dataset("ml-100k", cache_dir=args.cache), Path(folder) / "serving"))
    tokens = ItemTokenTable(i for i in store.items if item_token(i))
    add_item_tokens(tokenizer, list(tokens.values()))  # text without item tokens encodes as before
    rng = random.Random(0)
    users = rng.sample(sorted(store.users), args.users)
    items = list(store.items)
    table = Table(title=f"prompt tokens per user (mean of {args.users} ML-100K users)")
    for col in ("history (liked / disliked)", "m", "layout", "items named by", "each prompt in full", "ideal reuse", f"{KV_BLOCK_TOKENS}-token blocks"):
        table.add_column(col, justify="right")
    # (token block, item tokens): both layouts with titles, the block layout with item tokens
    kinds = ((0, "off"), (KV_BLOCK_TOKENS, "off"), (KV_BLOCK_TOKENS, "beside"), (KV_BLOCK_TOKENS, "only"))
    names = {"off": "title", "beside": "token + title", "only": "token"}
    for liked, disliked in ((10, 3), (50, 10)):
        for m in (10, 20):
            counts: dict[tuple[int, str], list[tuple[int, int, int]]] = {k: [] for k in kinds}
            for user in users:
                profile = build_profile(store.history(user), store.liked_at_least, store.disliked_at_most, store.demographics(user))
                cands = [Candidate(store.items[i].title, r + 1, i) for r, i in enumerate(rng.sample(items, m))]
                for layout, mode in kinds:
                    cfg = PromptConfig(max_liked=liked, max_disliked=disliked, item_tokens=mode, token_table=tokens)
                    msgs = user_messages(profile, cands, cfg)
                    ideal = prompt_token_cost(tokenizer, msgs, 1, layout)
                    blocks = prompt_token_cost(tokenizer, msgs, KV_BLOCK_TOKENS, layout)
                    counts[(layout, mode)].append((ideal["without_reuse"], ideal["with_reuse"], blocks["with_reuse"]))
            for (layout, mode), rows in counts.items():
                full, ideal, blocks = np.mean(rows, axis=0)
                name = f"padded to {layout}" if layout else "plain"
                table.add_row(f"{liked} / {disliked}", str(m), name, names[mode], f"{full:,.0f}", f"{ideal:,.0f}", f"{blocks:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
