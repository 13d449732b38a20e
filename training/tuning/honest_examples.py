"""Instruction examples laid out as serving sees them, with hints from a backbone that never saw the target.

Candidates are the hint backbone's top list at the cut (items the user rated before it masked), the
hint is an item's position in that list, and the answers come from the target period (see
`training.tuning.hint_split`). So the hint is right exactly as often as it is at serving, where the list is
the retrieval backbone's top-m and the relevant item comes after everything it was fitted on:
  * pointwise: a target-period item (any rating) in the top `pool`, labelled with its rating;
  * pairwise: a target-period like against a list item the user never rated, both orders (as at
    serving, where every candidate is unrated: a target-period item rated 3 or less would be a
    harder negative than serving ever asks about);
  * listwise: the top `n_candidates` with at least one target-period like; the answer puts the likes
    first (by rating, then recency) and fills the remaining letters in the hint's order.
The same builder at the real split's validation or test stage, with the held-out item as the only
target and the serving backbone's scores, gives the hint reliability serving faces.
"""

from __future__ import annotations

import random

import numpy as np

from service.ranking.prompts import PromptConfig, listwise_answer, listwise_prompt, pairwise_prompt, pointwise_prompt
from training.data.split import NO_ITEM, Split
from training.tuning.hint_split import Targets
from training.tuning.instructions import ExampleBuilder, InstructionConfig, user_profile


class ServingListExampleBuilder(ExampleBuilder):
    def __init__(
        self,
        split: Split,
        stage: str,
        scores: np.ndarray,
        targets: Targets,
        prompt_cfg: PromptConfig,
        cfg: InstructionConfig,
        pool: int = 20,
        masked_items: np.ndarray | None = None,
    ):
        """`split` and `stage` say what the user's known past is (its `history(u, stage)` is what
        `scores[u]` was computed from); `targets` the events after it. `masked_items` (one per user,
        NO_ITEM for none) are left out of the top list although unknown at `stage`: the hint split's
        early-stopping like, which is neither a target nor a fair negative."""
        super().__init__(split, scores, prompt_cfg, cfg)
        self.stage, self.targets, self.pool = stage, targets, pool
        self.masked_items = masked_items
        self._lists: dict[int, list[int]] = {}
        self.liked_at_least = split.dataset.scale.liked_at_least

    def top_list(self, user: int) -> list[int]:
        if user not in self._lists:
            scores = self.scores[user].astype(np.float64).copy()
            scores[self.split.known_items(user, self.stage)] = -np.inf
            if self.masked_items is not None and self.masked_items[user] != NO_ITEM:
                scores[self.masked_items[user]] = -np.inf
            top = np.argsort(-scores, kind="stable")[: self.pool]
            self._lists[user] = [int(i) for i in top]
        return self._lists[user]

    def _liked_targets(self, user: int) -> dict[int, float]:
        return {i: r for i, r in self.targets.of(user).items() if r >= self.liked_at_least}

    def pointwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        rated = self.targets.of(user)
        lst = self.top_list(user)
        in_list = [(pos, item) for pos, item in enumerate(lst) if item in rated]
        if not in_list:
            return []
        pos, item = rng.choice(in_list)
        profile = user_profile(self.split, user, set(), self.prompt_cfg)
        prompt = pointwise_prompt(profile, self._candidate(item, pos + 1), self.prompt_cfg, rng if shift else None, n_candidates=len(lst))
        rating = rated[item]
        return [self._example(user, prompt, str(int(round(rating))), {"rating": rating})]

    def pairwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        liked, rated = self._liked_targets(user), self.targets.of(user)
        lst = self.top_list(user)
        positives = [p for p, item in enumerate(lst) if item in liked]
        negatives = [p for p, item in enumerate(lst) if item not in rated]
        if not positives or not negatives:
            return []
        p, n = rng.choice(positives), rng.choice(negatives)
        profile = user_profile(self.split, user, set(), self.prompt_cfg)
        cands = {p: self._candidate(lst[p], p + 1), n: self._candidate(lst[n], n + 1)}
        out = []
        for a, b in ((p, n), (n, p)):
            prompt = pairwise_prompt(profile, cands[a], cands[b], self.prompt_cfg, rng if shift else None)
            ids = [self.split.dataset.items[lst[x]].item_id for x in (a, b)]
            label = {"prefers_a": a == p, "hint_prefers_a": a < b, "item_ids": ids}
            out.append(self._example(user, prompt, "Yes" if a == p else "No", label))
        return out

    def listwise(self, user: int, rng: random.Random, shift: bool) -> list[dict]:
        liked = self._liked_targets(user)
        pool = self.top_list(user)[: self.cfg.n_candidates]
        relevant = [j for j, item in enumerate(pool) if item in liked]
        if not relevant or len(pool) < self.cfg.n_candidates:
            return []
        recency = {item: t for t, item in enumerate(self.targets.items[user].tolist())}
        cands = [self._candidate(item, j + 1) for j, item in enumerate(pool)]
        profile = user_profile(self.split, user, set(), self.prompt_cfg)
        prompt = listwise_prompt(profile, cands, self.prompt_cfg, rng if shift else None)
        letter_of = {idx: pos for pos, idx in enumerate(prompt.candidate_order)}
        top = min(self.prompt_cfg.listwise_top, len(pool))
        best = sorted(relevant, key=lambda j: (-liked[pool[j]], -recency[pool[j]]))
        best += [j for j in range(len(pool)) if j not in relevant][: max(0, top - len(best))]
        label = {
            "relevant_letters": sorted(letter_of[j] for j in relevant),
            "n_candidates": len(pool),
            "hint_top": sorted(letter_of[j] for j in range(top)),
        }
        return [self._example(user, prompt, listwise_answer([letter_of[j] for j in best[:top]]), label)]
