"""Export what the gateway serves from (`service.gateway.serving_tables` defines the format)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from service.gateway.serving_tables import FORMAT_VERSION, INTERACTIONS, ITEMS, META, USERS
from training.data.fingerprint import dataset_fingerprint
from training.data.types import Dataset
from training.fsutil import atomic_folder


def write_serving_tables(dataset: Dataset, folder: Path, rows: np.ndarray | None = None, state: str = "all") -> Path:
    """Writes `folder` all or nothing; an export of the same data is left as it is.

    `rows` (indexes into the ratings, in the order to write) keeps only those ratings: the data set
    as it was at some past moment, named by `state` (`make replay` serves the test-time state).
    The fingerprint stays the data set's: it is the same data, seen earlier."""
    fingerprint = dataset_fingerprint(dataset)
    meta_file = folder / META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") == FORMAT_VERSION and meta.get("fingerprint") == fingerprint and meta.get("state", "all") == state:
            return folder
    r = dataset.ratings if rows is None else dataset.ratings.subset(rows)
    with atomic_folder(folder) as staging:
        with (staging / ITEMS).open("w", encoding="utf-8") as fh:
            for it in dataset.items:
                fh.write(json.dumps({"item_id": it.item_id, "title": it.title, "genres": list(it.genres), "year": it.year}) + "\n")
        with (staging / USERS).open("w", encoding="utf-8") as fh:
            for u in dataset.users:
                fh.write(json.dumps({"user_id": u.user_id, "age": u.age, "gender": u.gender, "occupation": u.occupation, "location": u.location}) + "\n")
        np.savez(staging / INTERACTIONS, user=r.user.astype(np.int32), item=r.item.astype(np.int32),
                 rating=r.rating.astype(np.float32), timestamp=r.timestamp.astype(np.int64))
        meta = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset.name,
            "scale": asdict(dataset.scale),
            "counts": {"items": dataset.n_items, "users": dataset.n_users, "ratings": len(r)},
            "fingerprint": fingerprint,
            "state": state,
        }
        (staging / META).write_text(json.dumps(meta, indent=2))
    return folder
