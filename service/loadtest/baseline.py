"""What the paper's reference code does per user, on the same model and hardware: the same 2m+1
prompts (m pointwise, m/2 pairs in both orders, one listwise), all sent together, each answered as
free text at temperature 0.1 and parsed; a failed parse becomes a neutral score. The server runs
without prefix caching, as the reference code's engine did. Used by `make bench` as the baseline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from service.llm.client import VLLMClient
from service.ranking.engine import disjoint_pairs
from service.ranking.prompts import Candidate, PromptConfig, UserProfile, listwise_prompt, pairwise_prompt, pointwise_prompt
from service.ranking.scoring import parse_listwise

MAX_TOKENS = 64
TEMPERATURE = 0.1


def parse_rating(text: str, max_rating: int) -> float | None:
    match = re.search(r"\d+(?:\.\d+)?", text)
    if not match:
        return None
    value = float(match.group())
    return value if 1 <= value <= max_rating else None


def parse_yes_no(text: str) -> bool | None:
    word = re.search(r"\b(yes|no)\b", text.lower())
    return None if word is None else word.group(1) == "yes"


async def baseline_rank(llm: VLLMClient, user: UserProfile, cands: Sequence[Candidate], cfg: PromptConfig, seed: int) -> tuple[list[float], int]:
    """Hybrid utility per candidate (paper's rules, 1/3 weights) and the number of failed parses."""
    m = len(cands)
    pairs = disjoint_pairs(m, seed)
    asks = [(i, j) for a, b in pairs for i, j in ((a, b), (b, a))]
    point_prompts = [pointwise_prompt(user, c, cfg, n_candidates=m) for c in cands]
    pair_prompts = [pairwise_prompt(user, cands[i], cands[j], cfg) for i, j in asks]
    list_prompt = listwise_prompt(user, cands, cfg)
    gen = dict(max_tokens=MAX_TOKENS, temperature=TEMPERATURE)
    texts = await asyncio.gather(*(llm.generate(p.messages, **gen) for p in [*point_prompts, *pair_prompts, list_prompt]))
    failed = 0
    utility = [0.0] * m
    for i, text in enumerate(texts[:m]):
        rating = parse_rating(text, cfg.max_rating)
        failed += rating is None
        utility[i] += (rating if rating is not None else (cfg.max_rating + 1) / 2) / 3
    answers = dict(zip(asks, texts[m : m + len(asks)]))
    for a, b in pairs:
        ab, ba = parse_yes_no(answers[(a, b)]), parse_yes_no(answers[(b, a)])
        failed += (ab is None) + (ba is None)
        if ab is True and ba is False:
            utility[a] += 1 / 3
        elif ab is False and ba is True:
            utility[b] += 1 / 3
        else:
            utility[a] += 0.5 / 3
            utility[b] += 0.5 / 3
    parsed = parse_listwise(texts[-1], m, min(cfg.listwise_top, m))
    failed += not parsed.well_formed
    for pos, letter_pos in enumerate(parsed.positions):
        utility[list_prompt.candidate_order[letter_pos]] += (m - pos) / 3
    return utility, failed
