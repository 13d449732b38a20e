"""Build the instruction-tuning set: one example per task for each sampled user draw.

Everything here reads only the training part of the split (PAPER.md): a user's targets are taken out
of their own training interactions and the prompt's history is the rest. Decisions:
  * negatives are "hard": items the backbone ranks high for the user that the user has not rated in
    training, because those are what the reranker faces at inference (the backbone's top-m);
  * pointwise targets are any rated training item (liked, neutral or disliked), label its rating;
  * pairwise: a liked training item vs a hard negative, asked in both orders (two examples);
  * listwise: 3 five-star + 2 four-star training items and 5 hard negatives (fewer positives when a
    user lacks them), label the positives by rating then recency;
  * the hint is the backbone's rank among the example's candidates. The backbone was trained on
    these very items, so hints are more reliable here than at serving time; fusion weights are
    fitted later on validation items the backbone never saw.
Validation users are held out whole; their examples are built in serving order (no shuffling).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.ranking.profile import Demographics, HistoryEvent, build_profile
from service.ranking.prompts import (
    Candidate,
    PromptConfig,
    UserProfile,
    listwise_answer,
    listwise_prompt,
    pairwise_prompt,
    pointwise_prompt,
)
from service.ranking.tasks import TASKS
from training.data.split import Split
from training.tuning.tune import encode_example


@dataclass(frozen=True)
class InstructionConfig:
    n_candidates: int = 10  # listwise candidates, and the pool a pointwise hint rank is taken from
    n_hard_negatives: int = 50  # negatives are drawn from the backbone's top of unrated items
    tasks: tuple[str, ...] = TASKS
    position_shift: bool = True
    seed: int = 2024


def user_profile(split: Split, user: int, exclude: set[int], cfg: PromptConfig) -> UserProfile:
    """The user's training-period history, minus `exclude`, through the serving code's builder."""
    ds = split.dataset
    history = [
        HistoryEvent(ds.items[item].title, rating, item_id=ds.items[item].item_id)
        for item, rating in zip(split.train_items[user].tolist(), split.train_ratings[user].tolist())
        if item not in exclude
    ]
    u = ds.users[user]
    return build_profile(history, ds.scale.liked_at_least, ds.scale.disliked_at_most, Demographics(u.age, u.gender, u.occupation))


class ExampleBuilder:
    def __init__(self, split: Split, scores: np.ndarray, prompt_cfg: PromptConfig, cfg: InstructionConfig):
        """`scores[u]` is the backbone's score of every item for user u (from training data only)."""
        self.split, self.scores, self.prompt_cfg, self.cfg = split, scores, prompt_cfg, cfg

    def _hard_negatives(self, user: int, rng: random.Random, k: int) -> list[int]:
        rated = set(self.split.train_items[user].tolist())
        order = np.argsort(-self.scores[user], kind="stable")
        pool = [int(i) for i in order[: self.cfg.n_hard_negatives + len(rated)] if int(i) not in rated][: self.cfg.n_hard_negatives]
        return rng.sample(pool, min(k, len(pool)))

    def _ranks(self, user: int, items: list[int]) -> list[int]:
        s = self.scores[user][items]
        order = np.argsort(-s, kind="stable")
        ranks = np.empty(len(items), dtype=int)
        ranks[order] = np.arange(1, len(items) + 1)
        return ranks.tolist()

    def _title(self, item: int) -> str:
        return self.split.dataset.items[item].title

    def _candidate(self, item: int, rank: int) -> Candidate:
        it = self.split.dataset.items[item]
        return Candidate(it.title, rank, it.item_id)

    def pointwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        items = self.split.train_items[user].tolist()
        ratings = self.split.train_ratings[user].tolist()
        if len(items) < 2:
            return []
        pos = rng.randrange(len(items))
        target, rating = items[pos], ratings[pos]
        pool = [target] + self._hard_negatives(user, rng, self.cfg.n_candidates - 1)
        rank = self._ranks(user, pool)[0]
        profile = user_profile(self.split, user, {target}, self.prompt_cfg)
        prompt = pointwise_prompt(profile, self._candidate(target, rank), self.prompt_cfg, rng if shift else None, n_candidates=len(pool))
        return [self._example(user, prompt, str(int(round(rating))), {"rating": rating})]

    def pairwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        liked = self.split.liked_sequence(user).tolist()
        negatives = self._hard_negatives(user, rng, 1)
        if len(liked) < 2 or not negatives:
            return []
        pos, neg = rng.choice(liked), negatives[0]
        ranks = self._ranks(user, [pos, neg])
        profile = user_profile(self.split, user, {pos}, self.prompt_cfg)
        cands = {pos: self._candidate(pos, ranks[0]), neg: self._candidate(neg, ranks[1])}
        out = []
        for a, b in ((pos, neg), (neg, pos)):
            prompt = pairwise_prompt(profile, cands[a], cands[b], self.prompt_cfg, rng if shift else None)
            label = {"prefers_a": a == pos, "hint_prefers_a": cands[a].backbone_rank < cands[b].backbone_rank}
            out.append(self._example(user, prompt, "Yes" if a == pos else "No", label))
        return out

    def listwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        items = self.split.train_items[user].tolist()
        ratings = self.split.train_ratings[user].tolist()
        recency = {item: t for t, item in enumerate(items)}
        by_rating = {r: [i for i, x in zip(items, ratings) if x == r] for r in (5.0, 4.0)}
        top = self.prompt_cfg.listwise_top
        positives = rng.sample(by_rating[5.0], min(3, len(by_rating[5.0])))
        positives += rng.sample(by_rating[4.0], min(top - len(positives), len(by_rating[4.0])))
        if len(positives) < top:
            rest = [i for i in by_rating[5.0] if i not in positives]
            positives += rng.sample(rest, min(top - len(positives), len(rest)))
        negatives = self._hard_negatives(user, rng, self.cfg.n_candidates - len(positives))
        if not positives or len(positives) + len(negatives) < self.cfg.n_candidates:
            return []
        rating_of = dict(zip(items, ratings))
        pool = positives + negatives
        ranks = self._ranks(user, pool)
        cands = [self._candidate(i, r) for i, r in zip(pool, ranks)]
        profile = user_profile(self.split, user, set(positives), self.prompt_cfg)
        prompt = listwise_prompt(profile, cands, self.prompt_cfg, rng if shift else None)
        letter_of = {idx: pos for pos, idx in enumerate(prompt.candidate_order)}
        best = sorted(range(len(positives)), key=lambda j: (-rating_of[pool[j]], -recency[pool[j]]))
        answer = listwise_answer([letter_of[j] for j in best])
        label = {
            "relevant_letters": sorted(letter_of[j] for j in range(len(positives))),
            "n_candidates": len(pool),
            "hint_top": sorted(letter_of[j] for j in range(len(pool)) if ranks[j] <= self.prompt_cfg.listwise_top),
        }
        return [self._example(user, prompt, answer, label)]

    def _example(self, user: int, prompt, answer: str, label: dict) -> dict:
        return {
            "user_id": self.split.dataset.users[user].user_id,
            "task": prompt.task,
            "prompt": prompt.messages,
            "completion": [{"role": "assistant", "content": answer}],
            "label": label,
        }

    def examples_for(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        out = []
        for task in self.cfg.tasks:
            out += getattr(self, task)(user, rng, shift)
        return out


def split_users_for_validation(users: np.ndarray, share: float, seed: int, minimum: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(users)
    n_valid = min(len(users) // 2, max(minimum, int(round(share * len(users)))))
    return np.sort(shuffled[n_valid:]), np.sort(shuffled[:n_valid])


def build_examples(builder: ExampleBuilder, draws: np.ndarray, shift: bool, seed: int) -> list[dict]:
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    out = []
    for user in tqdm(draws.tolist(), desc="instructions", leave=False):
        out += builder.examples_for(int(user), rng, shift)
    return out


def write_jsonl(rows: list[dict], path: Path) -> str:
    """Write rows and return the SHA-256 of the file (the data hash in the model manifest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    digest = hashlib.sha256()
    with tmp.open("w") as fh:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False) + "\n"
            fh.write(line)
            digest.update(line.encode())
    tmp.replace(path)
    return digest.hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def instruction_stats(rows: list[dict], tokenizer=None, token_block: int = 0) -> dict:
    per_task = Counter(r["task"] for r in rows)
    stats: dict = {"examples": len(rows), "per_task": dict(per_task), "users": len({r["user_id"] for r in rows})}
    if tokenizer is not None and rows:
        lengths: dict[str, list[int]] = {}
        for r in rows:  # as tuning encodes them
            lengths.setdefault(r["task"], []).append(len(encode_example(tokenizer, r, 10**6, token_block)["input_ids"]))
        stats["tokens_per_example"] = {t: {"mean": float(np.mean(v)), "max": int(np.max(v))} for t, v in lengths.items()}
    return stats
