"""Interaction data: loaders for each source format, one in-memory form, and the paper's split."""

from __future__ import annotations

from pathlib import Path

from training.data.bookcrossing import load_bookcrossing
from training.data.embedded import ensure_ml100k
from training.data.errors import DataError
from training.data.movielens import load_atomic, load_grouplens_1m, load_grouplens_100k
from training.data.split import Split, leave_one_out, require_held_out_users
from training.data.types import Dataset, Item, User

# Formats a user can point `--data-path` at; `ml-100k` without a path is the embedded default.
LOADERS = {
    "ml-100k": load_grouplens_100k,
    "ml-1m": load_grouplens_1m,
    "bookcrossing": load_bookcrossing,
    "atomic": load_atomic,
}


def load_dataset(name: str = "ml-100k", path: Path | None = None, *, cache_dir: Path = Path(".cache")) -> Dataset:
    """Load `name` from a local folder, or the embedded ML-100K when no path is given."""
    if path is None:
        if name != "ml-100k":
            raise DataError(Path(name), "only ml-100k is embedded; pass --data-path with the original files")
        return load_atomic(ensure_ml100k(cache_dir), "ml-100k")
    if name not in LOADERS:
        raise DataError(Path(path), f"unknown dataset format {name!r}; choose one of {sorted(LOADERS)}")
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "data folder not found")
    return LOADERS[name](path)


__all__ = ["DataError", "Dataset", "Item", "Split", "User", "leave_one_out", "load_dataset", "require_held_out_users", "LOADERS"]
