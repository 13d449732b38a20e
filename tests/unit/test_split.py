"""Leave-one-out over liked items by time: held-out interactions never reach the training part."""

from __future__ import annotations

import numpy as np

from training.backbones.popularity import Popularity
from training.data.split import NO_ITEM, leave_one_out
from training.data.types import MOVIELENS_SCALE, Item, User, build_dataset


def dataset_from(rows):
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    return build_dataset("t", [User(u) for u in users], [Item(i, f"Movie {i}") for i in items], rows, MOVIELENS_SCALE)


def test_last_liked_is_test_previous_liked_is_validation_and_only_earlier_events_train():
    rows = [
        ("u", "a", 5, 1), ("u", "b", 2, 2), ("u", "c", 4, 3), ("u", "d", 3, 4),
        ("u", "e", 5, 5), ("u", "f", 1, 6), ("u", "g", 4, 7), ("u", "h", 2, 8),
    ]
    ds = dataset_from(rows)
    split = leave_one_out(ds)
    name = lambda idx: ds.items[idx].item_id  # noqa: E731
    assert name(split.valid_item[0]) == "e" and name(split.test_item[0]) == "g"
    assert [name(i) for i in split.train_items[0]] == ["a", "b", "c", "d"]
    assert [name(i) for i in split.liked_sequence(0)] == ["a", "c"]
    assert [name(i) for i in split.disliked_sequence(0)] == ["b"]
    assert [name(i) for i in split.history(0, "test")] == ["a", "c", "e"]
    assert sorted(name(i) for i in split.known_items(0, "valid")) == ["a", "b", "c", "d"]


def test_timestamp_ties_keep_file_order():
    ds = dataset_from([("u", "a", 5, 7), ("u", "b", 5, 7), ("u", "c", 5, 7), ("u", "d", 5, 7)])
    split = leave_one_out(ds)
    assert ds.items[split.test_item[0]].item_id == "d"
    assert ds.items[split.valid_item[0]].item_id == "c"


def test_user_with_fewer_than_three_likes_is_trained_on_but_not_evaluated():
    ds = dataset_from([("u", "a", 5, 1), ("u", "b", 4, 2), ("u", "c", 1, 3)])
    split = leave_one_out(ds)
    assert split.test_item[0] == NO_ITEM and split.valid_item[0] == NO_ITEM
    assert len(split.train_items[0]) == 3 and len(split.evaluated_users()) == 0


def test_ml100k_split_holds_out_one_validation_and_one_test_like_per_user(ml100k, ml100k_split):
    split = ml100k_split
    assert split.summary()["evaluated_users"] == 942
    r = ml100k.ratings
    for u in split.evaluated_users():
        train = set(split.train_items[u].tolist())
        assert split.valid_item[u] not in train and split.test_item[u] not in train
        assert split.valid_item[u] != split.test_item[u]
        mine = r.user == u
        ts = dict(zip(r.item[mine].tolist(), r.timestamp[mine].tolist()))
        assert max(ts[i] for i in train) <= ts[split.valid_item[u]] <= ts[split.test_item[u]]


def test_changing_held_out_interactions_changes_nothing_built_from_training(ml100k, ml100k_split):
    """Replace every user's validation and test events with other liked items: the training part and
    a model fitted on it are bit-for-bit the same, so neither can depend on held-out data."""
    split = ml100k_split
    r = ml100k.ratings
    held = np.zeros(len(r), dtype=bool)
    for u in split.evaluated_users():
        held |= (r.user == u) & np.isin(r.item, [split.valid_item[u], split.test_item[u]])
    rows = [
        (ml100k.users[u].user_id, ml100k.items[i].item_id, float(x), int(t))
        for u, i, x, t in zip(r.user, r.item, r.rating, r.timestamp)
    ]
    rng = np.random.default_rng(0)
    swapped = [
        (uid, ml100k.items[int(rng.integers(ml100k.n_items))].item_id, 5.0, ts) if h else (uid, iid, x, ts)
        for (uid, iid, x, ts), h in zip(rows, held)
    ]
    other = leave_one_out(build_dataset("ml-100k", ml100k.users, ml100k.items, swapped, ml100k.scale))
    changed = 0
    for u in split.evaluated_users():
        assert np.array_equal(split.train_items[u], other.train_items[u])
        assert np.array_equal(split.train_ratings[u], other.train_ratings[u])
        changed += split.test_item[u] != other.test_item[u]
    assert changed > 800  # the held-out items really were different
    a, b = Popularity(ml100k.n_users, ml100k.n_items), Popularity(ml100k.n_users, ml100k.n_items)
    a.fit(split, progress=False)
    b.fit(other, progress=False)
    assert np.array_equal(a.item_vectors(), b.item_vectors())


def test_the_test_time_state_served_by_replay_holds_exactly_the_history_evaluation_reads(tmp_path):
    """Served from tables of `rows_as_of(..., 'test')`, each user's liked items in time order are
    `split.history(u, 'test')`: the training likes and then the validation item, never the test item."""
    from service.gateway.store import InteractionStore
    from tests.conftest import synthetic_dataset
    from training.data.serving_export import write_serving_tables
    from training.data.split import rows_as_of

    dataset = synthetic_dataset(n_users=30, n_items=25, per_user=9, seed=3)
    split = leave_one_out(dataset)
    store = InteractionStore.from_folder(write_serving_tables(dataset, tmp_path / "t", rows_as_of(dataset, "test"), state="test"))
    evaluated = set(split.evaluated_users().tolist())
    assert evaluated
    for u, user in enumerate(dataset.users):
        liked = [e.item_id for e in store.history(user.user_id) if e.rating >= store.liked_at_least]
        expected = [dataset.items[i].item_id for i in split.history(u, "test")]
        if u in evaluated:
            assert liked == expected
            assert dataset.items[split.test_item[u]].item_id not in {e.item_id for e in store.history(user.user_id)}
        else:
            assert liked == expected  # not held out: every like, as training saw them
