"""The gateway serves from the tables the pipeline exports, checked at load, never from raw files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.gateway.serving_tables import META, ServingTablesError, read_serving_tables
from service.gateway.store import InteractionStore
from tests.conftest import synthetic_dataset
from training.data.fingerprint import dataset_fingerprint
from training.data.serving_export import write_serving_tables


def test_the_store_holds_every_rating_of_the_data_set_in_time_order(tmp_path):
    dataset = synthetic_dataset(n_users=5, n_items=12, per_user=4)
    store = InteractionStore.from_folder(write_serving_tables(dataset, tmp_path / "serving"))
    r = dataset.ratings
    for u, user in enumerate(dataset.users):
        rows = np.flatnonzero(r.user == u)
        rows = rows[np.argsort(r.timestamp[rows], kind="stable")]
        assert [(e.item_id, e.rating) for e in store.history(user.user_id)] == [(dataset.items[int(r.item[i])].item_id, float(r.rating[i])) for i in rows]
    assert {it.item_id: it.title for it in store.items.values()} == {it.item_id: it.title for it in dataset.items}
    assert store.liked_at_least == dataset.scale.liked_at_least


def test_an_export_of_the_same_data_is_kept_and_other_data_under_the_same_name_replaces_it(tmp_path):
    folder = tmp_path / "serving"
    first = synthetic_dataset(n_users=5, n_items=12, per_user=4)
    write_serving_tables(first, folder)
    stamp = (folder / META).stat().st_mtime_ns
    write_serving_tables(first, folder)
    assert (folder / META).stat().st_mtime_ns == stamp
    other = synthetic_dataset(n_users=6, n_items=12, per_user=4)
    assert other.name == first.name and dataset_fingerprint(other) != dataset_fingerprint(first)
    write_serving_tables(other, folder)
    assert read_serving_tables(folder).fingerprint == dataset_fingerprint(other)
    assert len(read_serving_tables(folder).users) == 6


def test_a_missing_folder_names_itself_and_the_command_that_makes_it(tmp_path):
    with pytest.raises(ServingTablesError, match=r"no serving tables; run `python -m training data`") as err:
        read_serving_tables(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("damage", ["version", "counts", "truncated", "index"])
def test_a_stale_or_damaged_export_is_refused_with_the_reason(tmp_path, damage):
    folder = write_serving_tables(synthetic_dataset(n_users=5, n_items=12, per_user=4), tmp_path / "serving")
    meta = json.loads((folder / META).read_text())
    if damage == "version":
        meta["format_version"] = 0
        (folder / META).write_text(json.dumps(meta))
        expected = "format version 0"
    elif damage == "counts":
        (folder / "items.jsonl").write_text("\n".join((folder / "items.jsonl").read_text().splitlines()[:-1]) + "\n")
        expected = "tables hold"
    elif damage == "truncated":
        (folder / "interactions.npz").write_bytes((folder / "interactions.npz").read_bytes()[:100])
        expected = "unreadable serving tables"
    else:
        with np.load(folder / "interactions.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["item"][0] = 99
        np.savez(folder / "interactions.npz", **arrays)
        expected = "out of range"
    with pytest.raises(ServingTablesError, match=expected):
        read_serving_tables(folder)
