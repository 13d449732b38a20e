"""Content fingerprints: artefacts are keyed by the data they came from, not by a data set's name,
so a different folder of the same format never reuses a model trained on another one."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from training.data.split import Split
from training.data.types import Dataset


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over the ids, titles, user fields, the preference scale and every rating."""
    h = hashlib.sha256(dataset.name.encode())
    for it in dataset.items:
        h.update(json.dumps([it.item_id, it.title, list(it.genres), it.year]).encode())
    for u in dataset.users:
        h.update(json.dumps([u.user_id, u.age, u.gender, u.occupation, u.location]).encode())
    h.update(json.dumps([dataset.scale.min_rating, dataset.scale.max_rating, dataset.scale.liked_at_least, dataset.scale.disliked_at_most]).encode())
    r = dataset.ratings
    for a in (r.user, r.item, r.rating, r.timestamp):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def split_fingerprint(split: Split) -> str:
    """The data set's fingerprint and what the split holds out: a backbone is fitted on a split (the
    serving one, or the hint split of honest tuning), so it is keyed by the split."""
    h = hashlib.sha256(dataset_fingerprint(split.dataset).encode())
    for items, ratings in zip(split.train_items, split.train_ratings):
        h.update(np.int64(len(items)).tobytes())
        h.update(np.ascontiguousarray(items, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(ratings, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(split.valid_item, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(split.test_item, dtype=np.int32).tobytes())
    return h.hexdigest()
