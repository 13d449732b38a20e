"""Most-popular baseline: every user gets items ordered by their number of training likes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from training.backbones.base import Backbone, BackboneConfig, TrainLog
from training.data.split import Split


class Popularity(Backbone):
    name = "pop"
    Config = BackboneConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts_ = np.zeros(self.n_items, dtype=np.float32)

    def fit(self, split: Split, progress: bool = True, checkpoint: Path | None = None, checkpoint_every_s: float = 0.0) -> TrainLog:
        """Counting takes a moment, so there is nothing to checkpoint."""
        start = time.perf_counter()
        _, items = split.liked_pairs()
        self.counts_ = np.bincount(items, minlength=self.n_items).astype(np.float32)
        seconds = time.perf_counter() - start
        valid = self.evaluate(split, "valid")["NDCG@10"]
        return TrainLog(epochs_run=1, best_epoch=1, best_valid_ndcg10=valid, seconds=time.perf_counter() - start, epoch_seconds=[round(seconds, 4)])

    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.ones((len(users), 1), dtype=np.float32)

    def item_vectors(self) -> np.ndarray:
        return self.counts_[:, None]

    def save_extra(self, folder: Path) -> None:
        np.save(folder / "item_counts.npy", self.counts_)

    def load_extra(self, folder: Path) -> None:
        self.counts_ = np.load(folder / "item_counts.npy")
