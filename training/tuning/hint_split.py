"""Honest hints: cut each user's training period in time, so the hint backbone never saw the items an
instruction example asks about.

Why: the serving backbone is fitted on every training event, so a hint taken from it is right about
9 times in 10 on training items and about 1 time in 4 (against top-50 negatives) on the held-out
item serving faces. A model tuned on the former learns to copy the hint.

Decision: one cut per user rather than K folds over time. Per user, the last `target_share` of the
training-period likes (at least one, at most `max_targets`) and every event from the first of them
on form the *target period*; the events before it form the *hint period*. A hint backbone of the
same family as the serving one is fitted on the hint periods of all users. Examples then show the
hint-period history, candidates from the hint backbone's top list at the cut and its ranks as hints,
and ask about target-period items, which is the serving situation one step earlier in time: history
up to t, a backbone fitted up to t, an item that comes after t. K folds would need K hint backbones
and hint histories of unequal length for the same user, for no gain in how serving-like a prompt is.

The hint backbone stops early on the last like of each target period (it stands in the hint split's
validation slot and is never a target), as the serving backbone stops on the validation item. The
hint split has no test period: its test slot repeats that item so the shared backbone code, which
evaluates users with a test item, runs unchanged.
Only the training part of the real split is read: nothing of the validation or test period enters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.split import NO_ITEM, Split


@dataclass(frozen=True)
class HintCut:
    target_share: float = 0.2
    max_targets: int = 10
    min_history_likes: int = 3  # likes left in the hint period; fewer and the user keeps all of it

    @property
    def tag(self) -> str:
        """Names the hint backbone's folder, so another cut never reuses it."""
        return f"hints-s{self.target_share:g}-t{self.max_targets}-h{self.min_history_likes}"


@dataclass
class Targets:
    """Per user, the target-period events an example may ask about, in time order."""

    items: list[np.ndarray]
    ratings: list[np.ndarray]

    def of(self, user: int) -> dict[int, float]:
        return dict(zip(self.items[user].tolist(), self.ratings[user].tolist()))

    def users(self) -> np.ndarray:
        return np.array([u for u, items in enumerate(self.items) if len(items)], dtype=np.int64)


def cut_training_period(split: Split, cut: HintCut = HintCut()) -> tuple[Split, Targets]:
    """The hint split (hint periods as its training part) and the target periods."""
    liked_cut = split.dataset.scale.liked_at_least
    hint_items, hint_ratings, target_items, target_ratings = [], [], [], []
    stop_item = np.full(split.n_users, NO_ITEM, dtype=np.int32)
    for u in range(split.n_users):
        items, ratings = split.train_items[u], split.train_ratings[u]
        liked_pos = np.flatnonzero(ratings >= liked_cut)
        n_targets = min(cut.max_targets, max(1, int(round(cut.target_share * len(liked_pos)))))
        # one more like than the targets: the last one is the hint backbone's early-stopping item
        if len(liked_pos) - (n_targets + 1) < cut.min_history_likes:
            hint_items.append(items)
            hint_ratings.append(ratings)
            target_items.append(np.empty(0, dtype=np.int32))
            target_ratings.append(np.empty(0, dtype=np.float32))
            continue
        start = liked_pos[-(n_targets + 1)]
        stop = liked_pos[-1]
        stop_item[u] = items[stop]
        keep = np.arange(start, len(items)) != stop
        hint_items.append(items[:start])
        hint_ratings.append(ratings[:start])
        target_items.append(items[start:][keep])
        target_ratings.append(ratings[start:][keep])
    hint_split = Split(
        dataset=split.dataset,
        train_items=hint_items,
        train_ratings=hint_ratings,
        valid_item=stop_item,
        test_item=stop_item.copy(),
    )
    return hint_split, Targets(target_items, target_ratings)


def held_out_targets(split: Split, stage: str) -> Targets:
    """Each evaluated user's validation or test item as the only target (a like: its rating is not
    kept in the split, the scale's top stands in). What serving faces, for measuring the hints."""
    held = split.target(stage)
    items = [np.array([t] if t != NO_ITEM else [], dtype=np.int32) for t in held.tolist()]
    ratings = [np.full(len(i), split.dataset.scale.max_rating, dtype=np.float32) for i in items]
    return Targets(items, ratings)
