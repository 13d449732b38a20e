"""The one interface every backbone implements, and the training loop they share.

A backbone ranks items for a user as a dot product `user_vector . item_vector`: the general models
learn both tables, the sequential ones compute the user vector from the user's liked-item history.
That single form is what serving needs (two matrices, or the model plus a history) and what the
candidate lists, embeddings for clustering and hints for prompts are built from.

Contract for implementers (see popularity.py for the smallest example):
  * `name` (registry key) and `Config` (a pydantic model with the CPU defaults) as class attributes;
  * `train_epoch(split, rng) -> float` runs one epoch and returns the mean loss;
  * `user_vectors(users, histories)` and `item_vectors()` return float32 numpy arrays;
  * `module` (a torch.nn.Module) holds every learned parameter, so early stopping, saving and
    loading work without per-model code. Models without parameters override `fit`.
"""

from __future__ import annotations

import copy
import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from training.data.split import Split
from training.metrics import metrics_from_ranks, target_ranks


class BackboneConfig(BaseModel):
    """Fields every backbone shares; each backbone extends it with its own defaults."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 1  # epochs between validation checks
    patience: int = 10  # validation checks without improvement before stopping
    seed: int = 2024


@dataclass
class TrainLog:
    epochs_run: int = 0
    best_epoch: int = 0
    best_valid_ndcg10: float = 0.0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone(ABC):
    name: ClassVar[str]
    sequential: ClassVar[bool] = False
    Config: ClassVar[type[BackboneConfig]] = BackboneConfig

    def __init__(self, n_users: int, n_items: int, config: BackboneConfig | None = None, device: torch.device | None = None):
        self.n_users = n_users
        self.n_items = n_items
        self.config = config or self.Config()
        self.device = device or pick_device()
        torch.manual_seed(self.config.seed)
        self.module: torch.nn.Module | None = self.build_module()
        if self.module is not None:
            self.module.to(self.device)

    # --- what each backbone provides -------------------------------------------------------
    def build_module(self) -> torch.nn.Module | None:
        return None

    def train_epoch(self, split: Split, rng: np.random.Generator) -> float:
        raise NotImplementedError

    @abstractmethod
    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(len(users), d) float32. `histories[i]` is user i's liked items in time order."""

    @abstractmethod
    def item_vectors(self) -> np.ndarray:
        """(n_items, d) float32."""

    # --- shared behaviour ------------------------------------------------------------------
    def score(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return self.user_vectors(users, histories) @ self.item_vectors().T

    def top_m(self, users: np.ndarray, histories: list[np.ndarray], exclude: list[np.ndarray], m: int) -> np.ndarray:
        """Best `m` item indices per user, highest score first, `exclude[i]` masked out."""
        scores = self.score(users, histories)
        for row, known in enumerate(exclude):
            scores[row, known] = -np.inf
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def evaluate(self, split: Split, stage: str, users: np.ndarray | None = None) -> dict[str, float]:
        """HR@k / NDCG@k of the held-out item over the full catalogue, rated items masked."""
        users = split.evaluated_users() if users is None else users
        ranks = []
        for chunk in np.array_split(users, max(1, len(users) // 512)):
            histories = [split.history(u, stage) for u in chunk]
            scores = self.score(chunk, histories).astype(np.float64)
            for row, u in enumerate(chunk):
                scores[row, split.known_items(u, stage)] = -np.inf
            ranks.append(target_ranks(scores, split.target(stage)[chunk]))
        return metrics_from_ranks(np.concatenate(ranks))

    def fit(self, split: Split, progress: bool = True) -> TrainLog:
        """Train with early stopping on validation NDCG@10; the best epoch's weights are kept."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        log = TrainLog()
        best_state: dict[str, Any] | None = None
        checks_without_gain = 0
        start = time.perf_counter()
        bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {self.name}", disable=not progress, leave=False)
        for epoch in bar:
            self.module.train()
            loss = self.train_epoch(split, rng)
            log.epochs_run = epoch
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue
            self.module.eval()
            with torch.no_grad():
                ndcg = self.evaluate(split, "valid")["NDCG@10"]
            log.history.append({"epoch": epoch, "loss": float(loss), "valid_NDCG@10": ndcg})
            bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{ndcg:.4f}", best=f"{log.best_valid_ndcg10:.4f}")
            if ndcg > log.best_valid_ndcg10 or best_state is None:
                log.best_valid_ndcg10, log.best_epoch = ndcg, epoch
                best_state = copy.deepcopy(self.module.state_dict())
                checks_without_gain = 0
            else:
                checks_without_gain += 1
                if checks_without_gain >= cfg.patience:
                    break
        if best_state is not None:
            self.module.load_state_dict(best_state)
        self.module.eval()
        log.seconds = time.perf_counter() - start
        return log

    # --- persistence -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({"backbone": self.name, "n_users": self.n_users, "n_items": self.n_items, "config": self.config.model_dump()}, indent=2)
        )
        if self.module is not None:
            torch.save({k: v.cpu() for k, v in self.module.state_dict().items()}, folder / "model.pt")
        self.save_extra(folder)

    def save_extra(self, folder: Path) -> None:
        """State outside `module` (none for most backbones)."""

    def load_extra(self, folder: Path) -> None:
        pass

    @classmethod
    def load(cls, folder: Path, device: torch.device | None = None) -> Backbone:
        meta = json.loads((folder / "config.json").read_text())
        model = cls(meta["n_users"], meta["n_items"], cls.Config(**meta["config"]), device=device)
        if model.module is not None:
            model.module.load_state_dict(torch.load(folder / "model.pt", map_location=model.device))
            model.module.eval()
        model.load_extra(folder)
        return model


def log_as_dict(log: TrainLog) -> dict[str, Any]:
    return asdict(log)
