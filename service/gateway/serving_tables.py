"""The data the gateway serves from: a versioned folder the offline pipeline exports.

artifacts/<dataset>/serving/
  meta.json          format version, data set name, preference scale, counts, data fingerprint
  items.jsonl        the catalogue in dense index order: item_id, title, genres, year
  users.jsonl        users in dense index order: user_id, age, gender, occupation, location
  interactions.npz   every rating as parallel arrays (user, item: dense indexes; rating; timestamp)

The gateway reads only this folder (and the backbone's vectors), never the raw data files nor the
training package, so its image ships no training code and starts without downloading anything.
`python -m training data` (and every `make tune`) writes it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META, ITEMS, USERS, INTERACTIONS = "meta.json", "items.jsonl", "users.jsonl", "interactions.npz"
ARRAYS = ("user", "item", "rating", "timestamp")
EXPORT_COMMAND = "python -m training data"


class ServingTablesError(RuntimeError):
    """The folder is missing, from another format version, or inconsistent; the message names it."""


@dataclass(frozen=True)
class ServingTables:
    dataset: str
    scale: dict[str, float]  # min_rating, max_rating, liked_at_least, disliked_at_most
    fingerprint: str
    items: list[dict]
    users: list[dict]
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_serving_tables(folder: Path) -> ServingTables:
    meta_file = folder / META
    if not meta_file.is_file():
        raise ServingTablesError(f"{folder}: no serving tables; run `{EXPORT_COMMAND}` (or `make tune`)")
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ServingTablesError(
                f"{meta_file}: format version {meta.get('format_version')}, this gateway reads {FORMAT_VERSION}; rerun `{EXPORT_COMMAND}`")
        items, users = _jsonl(folder / ITEMS), _jsonl(folder / USERS)
        with np.load(folder / INTERACTIONS, allow_pickle=False) as z:
            arrays = {name: z[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a truncated or hand-edited export
        raise ServingTablesError(f"{folder}: unreadable serving tables ({exc}); rerun `{EXPORT_COMMAND}`") from None
    counts = {"items": len(items), "users": len(users), "ratings": int(arrays["user"].shape[0])}
    if counts != meta.get("counts"):
        raise ServingTablesError(f"{folder}: tables hold {counts}, {META} says {meta.get('counts')}; rerun `{EXPORT_COMMAND}`")
    n = counts["ratings"]
    if any(arrays[a].shape != (n,) for a in ARRAYS) or (n and (arrays["user"].max() >= len(users) or arrays["item"].max() >= len(items))):
        raise ServingTablesError(f"{folder / INTERACTIONS}: arrays of unequal length or indexes out of range; rerun `{EXPORT_COMMAND}`")
    return ServingTables(meta["dataset"], meta["scale"], meta["fingerprint"], items, users, **arrays)
