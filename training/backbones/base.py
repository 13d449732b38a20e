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
    loading work without per-model code. Models without parameters override `fit`;
  * `build_optimizer()` when the model trains with one: `fit` checkpoints its state with the module's.

Checkpoints: `fit(split, checkpoint=path)` writes the whole training state (weights, optimizer, the
epoch's random state, the early-stopping state and log) to `path` atomically after an epoch, at most
every `checkpoint_every_s` seconds, and a later `fit` with the same path resumes after the last
saved epoch, ending where an uninterrupted run would. `checkpoint_key` names a training: backbone,
settings and the split's fingerprint, so a checkpoint is never resumed into another training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
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
    # eval_every and patience are meant for data up to this many training likes (ML-100K has 53.5K);
    # on more, an epoch holds that many times more training and both shrink in proportion
    # (early_stopping_cadence). 0: never rescale.
    cadence_reference_likes: int = 60_000


def scaled_batch(n_examples: int, batch_size: int, lr: float, max_steps: int) -> tuple[int, float]:
    """(batch size, learning rate) for an epoch of `n_examples` in at most `max_steps` steps.

    Up to `max_steps * batch_size` examples nothing changes (ML-100K's sizes); above it the batch
    grows so the number of steps stays `max_steps`, and the learning rate grows with the square
    root of the batch (the rule that keeps the gradient noise per step about the same for Adam).
    `max_steps` 0 means no cap."""
    if max_steps <= 0 or n_examples <= max_steps * batch_size:
        return batch_size, lr
    batch = math.ceil(n_examples / max_steps)
    return batch, lr * math.sqrt(batch / batch_size)


def early_stopping_cadence(eval_every: int, patience: int, likes: int, reference_likes: int) -> tuple[int, int]:
    """(epochs between checks, checks without gain before stopping) for `likes` training likes.

    Up to `reference_likes` the settings hold as given. Above, an epoch is `likes / reference_likes`
    times the training the settings were chosen for, so the epochs between checks and the epochs
    waited without gain (patience x eval_every) shrink by that factor; at least one epoch between
    checks and two checks of patience, so one noisy check never stops a training."""
    scale = likes / reference_likes if reference_likes > 0 else 1.0
    if scale <= 1.0:
        return eval_every, patience
    every = max(1, round(eval_every / scale))
    return every, max(2, round(patience * eval_every / (scale * every)))


@dataclass
class TrainLog:
    epochs_run: int = 0
    best_epoch: int = 0
    best_valid_ndcg10: float = 0.0
    seconds: float = 0.0  # training and validation, over every run of a resumed training
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # training time of each epoch (no validation)
    eval_seconds: float = 0.0  # validation time in all
    resumed_at: list[int] = field(default_factory=list)  # epochs a run resumed from a checkpoint
    eval_every: int = 0  # the early-stopping cadence used (early_stopping_cadence)
    patience: int = 0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone(ABC):
    name: ClassVar[str]
    sequential: ClassVar[bool] = False
    # How the gateway scores this backbone (`service.backbones.scorers`): "embedding" (user and item
    # vector tables) or "causal_sequence" (the encoder on the live history); saved in config.json.
    serving_scorer: ClassVar[str] = "embedding"
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
        self.optimizer_: torch.optim.Optimizer | None = None

    # --- what each backbone provides -------------------------------------------------------
    def build_module(self) -> torch.nn.Module | None:
        return None

    def train_epoch(self, split: Split, rng: np.random.Generator) -> float:
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer | None:
        return None

    def optimizer(self) -> torch.optim.Optimizer:
        """The training optimizer, built on first use (its state is part of a checkpoint)."""
        if self.optimizer_ is None:
            self.optimizer_ = self.build_optimizer()
        return self.optimizer_

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

    def checkpoint_key(self, split_fingerprint: str) -> str:
        """Names one training: this backbone, its settings and the data split it is fitted on."""
        blob = json.dumps({"backbone": self.name, "config": self.config.model_dump(), "split": split_fingerprint}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fit(self, split: Split, progress: bool = True, checkpoint: Path | None = None, checkpoint_every_s: float = 0.0) -> TrainLog:
        """Train with early stopping on validation NDCG@10; the best epoch's weights are kept.

        With `checkpoint`, the training state is saved there after an epoch (at most every
        `checkpoint_every_s` seconds), and a training that finds one resumes after its epoch."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        fit = _FitState(log=TrainLog())
        if checkpoint is not None and checkpoint.is_file():
            fit = self._restore(checkpoint, rng)
        run_start = time.perf_counter()
        last_save = run_start
        fit.log.eval_every, fit.log.patience = early_stopping_cadence(
            cfg.eval_every, cfg.patience, len(split.liked_pairs()[0]), cfg.cadence_reference_likes
        )
        first = cfg.epochs + 1 if fit.stopped else fit.log.epochs_run + 1
        bar = tqdm(range(first, cfg.epochs + 1), desc=f"train {self.name}", disable=not progress, leave=False)
        for epoch in bar:
            loss = self._train_one(split, rng, fit.log, epoch)
            if epoch % fit.log.eval_every == 0 or epoch == cfg.epochs:
                fit.stopped = self._check(split, fit, epoch, loss, bar)
            if checkpoint is not None and (fit.stopped or time.perf_counter() - last_save >= checkpoint_every_s):
                self._save_checkpoint(checkpoint, rng, fit, fit.seconds_before_run + time.perf_counter() - run_start)
                last_save = time.perf_counter()
            if fit.stopped:
                break
        if fit.best_state is not None:
            self.module.load_state_dict(fit.best_state)
        self.module.eval()
        fit.log.seconds = fit.seconds_before_run + time.perf_counter() - run_start
        return fit.log

    def _train_one(self, split: Split, rng: np.random.Generator, log: TrainLog, epoch: int) -> float:
        """One training epoch, timed into the log; returns its mean loss."""
        self.module.train()
        start = time.perf_counter()
        loss = self.train_epoch(split, rng)
        log.epoch_seconds.append(round(time.perf_counter() - start, 4))
        log.epochs_run = epoch
        return loss

    def _check(self, split: Split, fit: _FitState, epoch: int, loss: float, bar) -> bool:
        """A validation check after `epoch`; True when early stopping ends the training."""
        log = fit.log
        self.module.eval()
        start = time.perf_counter()
        with torch.no_grad():
            ndcg = self.evaluate(split, "valid")["NDCG@10"]
        eval_s = time.perf_counter() - start
        log.eval_seconds += eval_s
        log.history.append({"epoch": epoch, "loss": float(loss), "valid_NDCG@10": ndcg, "train_s": log.epoch_seconds[-1], "eval_s": round(eval_s, 4)})
        bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{ndcg:.4f}", best=f"{log.best_valid_ndcg10:.4f}", epoch_s=f"{log.epoch_seconds[-1]:.1f}")
        if ndcg > log.best_valid_ndcg10 or fit.best_state is None:
            log.best_valid_ndcg10, log.best_epoch = ndcg, epoch
            fit.best_state = copy.deepcopy(self.module.state_dict())
            fit.checks_without_gain = 0
            return False
        fit.checks_without_gain += 1
        return fit.checks_without_gain >= log.patience

    def _save_checkpoint(self, path: Path, rng: np.random.Generator, fit: _FitState, seconds: float) -> None:
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer_.state_dict() if self.optimizer_ is not None else None,
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "best_state": fit.best_state,
            "checks_without_gain": fit.checks_without_gain,
            "stopped": fit.stopped,
            "log": asdict(fit.log),
            "seconds": seconds,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, staging)
        os.replace(staging, path)  # a reader sees the old checkpoint or the new one, never half of one

    def _restore(self, path: Path, rng: np.random.Generator) -> _FitState:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])
        if state["optimizer"] is not None:
            self.optimizer().load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log = TrainLog(**state["log"])
        log.resumed_at.append(log.epochs_run)
        return _FitState(log=log, best_state=state["best_state"], checks_without_gain=state["checks_without_gain"],
                         stopped=state["stopped"], seconds_before_run=state["seconds"])

    # --- persistence -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({"backbone": self.name, "scorer": self.serving_scorer, "n_users": self.n_users, "n_items": self.n_items, "config": self.config.model_dump()}, indent=2)
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


@dataclass
class _FitState:
    """What early stopping carries from epoch to epoch (and a checkpoint carries across runs)."""

    log: TrainLog
    best_state: dict[str, Any] | None = None
    checks_without_gain: int = 0
    stopped: bool = False  # early stopping ended the training (a checkpoint of a finished training)
    seconds_before_run: float = 0.0


def log_as_dict(log: TrainLog) -> dict[str, Any]:
    return asdict(log)
