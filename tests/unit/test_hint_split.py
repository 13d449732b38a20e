"""Honest hints: the hint backbone's period ends before every target the instructions ask about, and
nothing of the validation or test period enters tuning."""

from __future__ import annotations

import numpy as np

from service.ranking.prompts import PromptConfig
from training.data.split import leave_one_out
from training.data.types import MOVIELENS_SCALE, Item, User, build_dataset
from training.tuning.hint_split import HintCut, cut_training_period, held_out_targets
from training.tuning.honest_examples import ServingListExampleBuilder
from training.tuning.instructions import InstructionConfig, build_examples


def one_user_dataset(n_events: int, disliked_every: int = 4):
    rows = [("u", f"i{t}", 1.0 if t % disliked_every == 3 else 5.0, t) for t in range(n_events)]
    items = [Item(f"i{t}", f"Movie {t}") for t in range(n_events)]
    return build_dataset("t", [User("u")], items, rows, MOVIELENS_SCALE)


def test_targets_are_the_last_fifth_of_the_training_likes_and_what_follows_the_first_of_them():
    split = leave_one_out(one_user_dataset(40))
    hint, targets = cut_training_period(split, HintCut(target_share=0.2, max_targets=10, min_history_likes=3))
    train = split.train_items[0].tolist()
    likes = split.liked_sequence(0).tolist()
    n_targets = round(0.2 * len(likes))
    first_target = likes[-(n_targets + 1)]
    cut_at = train.index(first_target)
    assert hint.train_items[0].tolist() == train[:cut_at]  # the hint period: everything before the cut
    stop = likes[-1]  # the hint backbone's early-stopping like: never a target
    assert hint.valid_item[0] == stop and hint.test_item[0] == stop
    assert targets.items[0].tolist() == [i for i in train[cut_at:] if i != stop]
    assert len([i for i in targets.items[0] if targets.of(0)[int(i)] >= 4]) == n_targets


def test_a_user_with_too_few_likes_keeps_the_whole_period_and_has_no_targets():
    split = leave_one_out(one_user_dataset(8))
    hint, targets = cut_training_period(split, HintCut(min_history_likes=3))
    assert hint.train_items[0].tolist() == split.train_items[0].tolist()
    assert targets.users().size == 0 and hint.test_item[0] == -1


def test_the_cut_reads_only_the_training_period(ml100k, ml100k_split):
    """Swap every validation and test event for another item: the hint split, the targets and the
    instructions built from them stay bit-for-bit the same, so tuning cannot depend on held-out data
    (a held-out item may still be listed as a candidate, as any catalogue item can be)."""
    split = ml100k_split
    rng = np.random.default_rng(0)
    r = ml100k.ratings
    held = {(int(u), int(split.valid_item[u])) for u in split.evaluated_users()} | {(int(u), int(split.test_item[u])) for u in split.evaluated_users()}
    rows = []
    for u, i, x, t in zip(r.user.tolist(), r.item.tolist(), r.rating.tolist(), r.timestamp.tolist()):
        item = int(rng.integers(ml100k.n_items)) if (u, i) in held else i
        rows.append((ml100k.users[u].user_id, ml100k.items[item].item_id, float(x), int(t)))
    other = leave_one_out(build_dataset("ml-100k", ml100k.users, ml100k.items, rows, ml100k.scale))
    a_hint, a_targets = cut_training_period(split)
    b_hint, b_targets = cut_training_period(other)
    scores = np.random.default_rng(1).random((split.n_users, split.n_items)).astype(np.float32)
    users = a_targets.users()[:150]
    rows = [build_examples(ServingListExampleBuilder(h, "valid", scores, t, PromptConfig(), InstructionConfig()), users, shift=True, seed=0)
            for h, t in ((a_hint, a_targets), (b_hint, b_targets))]
    assert len(rows[0]) > 40
    assert rows[0] == rows[1]  # the very same instructions, prompts and answers
    for u in range(split.n_users):
        assert np.array_equal(a_hint.train_items[u], b_hint.train_items[u])
        assert np.array_equal(a_hint.valid_item[u], b_hint.valid_item[u])
        assert np.array_equal(a_targets.items[u], b_targets.items[u])
        assert np.array_equal(a_targets.ratings[u], b_targets.ratings[u])


def test_honest_examples_ask_about_target_period_items_listed_as_the_hint_backbone_ranks_them(ml100k_split):
    split = ml100k_split
    hint, targets = cut_training_period(split)
    scores = np.random.default_rng(1).random((split.n_users, split.n_items)).astype(np.float32)
    builder = ServingListExampleBuilder(hint, "valid", scores, targets, PromptConfig(), InstructionConfig())
    users = targets.users()[:200]
    rows = build_examples(builder, users, shift=True, seed=0)
    assert {r["task"] for r in rows} == {"pointwise", "pairwise", "listwise"}
    ds = split.dataset
    for u in users[:50]:
        top = builder.top_list(int(u))
        assert not set(top) & set(hint.train_items[u].tolist())  # what the user rated before the cut is masked
        assert top == [int(i) for i in np.argsort(-np.where(np.isin(np.arange(split.n_items), hint.train_items[u]), -np.inf, scores[u]), kind="stable")[:20]]
    for row in rows:
        u = ds.user_index[row["user_id"]]
        if row["task"] == "pairwise":
            assert row["label"]["prefers_a"] == (row["completion"][0]["content"] == "Yes")


def test_held_out_targets_are_the_stage_item_alone():
    split = leave_one_out(one_user_dataset(12))
    assert held_out_targets(split, "test").of(0) == {int(split.test_item[0]): 5.0}
    assert held_out_targets(split, "valid").of(0) == {int(split.valid_item[0]): 5.0}


def test_honest_pairwise_negatives_are_unrated_and_the_early_stopping_like_is_never_listed(ml100k_split):
    """At serving every candidate is unrated, and the hint backbone's early-stopping item is a like:
    as a negative it would be a wrong label, as a candidate a hint it was tuned on."""
    split = ml100k_split
    hint, targets = cut_training_period(split)
    scores = np.random.default_rng(2).random((split.n_users, split.n_items)).astype(np.float32)
    users = targets.users()
    # scores that put each user's early-stopping like and target-period items at the top of the list
    for u in users:
        scores[u, targets.items[u]] += 10.0
        scores[u, hint.valid_item[u]] += 20.0
    builder = ServingListExampleBuilder(hint, "valid", scores, targets, PromptConfig(), InstructionConfig(), masked_items=hint.valid_item)
    rows = build_examples(builder, users[:300], shift=False, seed=0)
    ds = split.dataset
    pairs = [r for r in rows if r["task"] == "pairwise"]
    assert len(pairs) > 100
    for u in users[:300]:
        assert int(hint.valid_item[u]) not in builder.top_list(int(u))
    for row in pairs:
        u = ds.user_index[row["user_id"]]
        a, b = (ds.item_index[i] for i in row["label"]["item_ids"])
        positive, negative = (a, b) if row["label"]["prefers_a"] else (b, a)
        assert targets.of(u)[positive] >= ds.scale.liked_at_least
        assert negative not in targets.of(u) and negative not in hint.train_items[u]  # never rated
