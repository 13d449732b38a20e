"""Matrix factorisation trained with BPR (Rendle et al. 2009).

Also the base of the graph backbones: LightGCN is this model with its embedding tables smoothed over
the user-item graph before scoring, so it overrides `tables()` and reuses the sampler, the loss and
the epoch loop here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.backbones.base import Backbone, BackboneConfig, scaled_batch
from training.data.split import Split


class PairSampler:
    """BPR triples: every training like once per epoch, each with one uniform negative.

    A negative is any item the user has not liked in training (items rated low count as negatives,
    as in the paper's implicit-feedback setting). Sampling draws all negatives at once and redraws
    only the collisions, so an epoch costs a few vectorised passes, not a loop over interactions.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int):
        self.users, self.items, self.n_items = users, items, n_items
        # Sorted (user, item) keys make "did u like j?" one searchsorted over the whole batch.
        self.liked_keys = np.unique(users * n_items + items)

    def is_liked(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self.liked_keys, keys), len(self.liked_keys) - 1)
        return self.liked_keys[pos] == keys

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = rng.permutation(len(self.users))
        users, items = self.users[order], self.items[order]
        negatives = rng.integers(0, self.n_items, size=len(users))
        clash = np.flatnonzero(self.is_liked(users, negatives))
        # Each redraw hits a liked item with probability (user's likes / catalogue), so this ends fast.
        while clash.size:
            negatives[clash] = rng.integers(0, self.n_items, size=clash.size)
            clash = clash[self.is_liked(users[clash], negatives[clash])]
        return users, items, negatives


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(pos - neg), written with softplus for numerical stability."""
    return nn.functional.softplus(neg_scores - pos_scores).mean()


class EmbeddingTables(nn.Module):
    """One vector per user and per item; every learned parameter of MF and LightGCN."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)


class MF(Backbone):
    name = "mf"

    class Config(BackboneConfig):
        dim: int = 64
        init_std: float = 0.1
        reg: float = 1e-2  # L2 on the embeddings a batch touches, per triple
        lr: float = 2e-3
        batch_size: int = 1024
        epochs: int = 200
        eval_every: int = 2
        patience: int = 10
        # Steps per epoch at most (0: no cap); above it the batch grows with the data and the
        # learning rate by the square root of the batch (base.scaled_batch). ML-100K takes 53.
        max_steps_per_epoch: int = 0

    config: Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler_: PairSampler | None = None
        self.split_: Split | None = None
        self.batch_growth_ = 1.0  # this epoch's batch / config.batch_size (above 1 once the step cap binds)

    def build_module(self) -> nn.Module:
        return EmbeddingTables(self.n_users, self.n_items, self.config.dim, self.config.init_std)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.module.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    # --- hooks the graph backbones override -----------------------------------------------
    def prepare(self, split: Split) -> None:
        """Per-split state built once: the sampler (LightGCN adds its graph)."""
        users, items = split.liked_pairs()
        self.sampler_ = PairSampler(users, items, self.n_items)

    def begin_epoch(self, rng: np.random.Generator) -> None:
        """Per-epoch state (SGL redraws its augmented graphs here); nothing for MF."""

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user table, item table) used for scoring; MF scores with its raw embeddings."""
        return self.module.user.weight, self.module.item.weight

    def batch_loss(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        user_table, item_table = self.tables()
        u, i, j = user_table[users], item_table[items], item_table[negatives]
        loss = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        # L2 on the ego (unpropagated) embeddings, so the penalty is the same for MF and LightGCN.
        ego_u, ego_i, ego_j = self.module.user(users), self.module.item(items), self.module.item(negatives)
        l2 = (ego_u.pow(2).sum() + ego_i.pow(2).sum() + ego_j.pow(2).sum()) / (2 * len(users))
        return loss + self.config.reg * l2

    # --- Backbone ------------------------------------------------------------------------
    def train_epoch(self, split: Split, rng: np.random.Generator) -> float:
        if self.split_ is not split:
            self.prepare(split)
            self.split_ = split
        self.begin_epoch(rng)
        users, items, negatives = (torch.as_tensor(a, device=self.device) for a in self.sampler_.sample(rng))
        cfg, optimizer = self.config, self.optimizer()
        size, lr = scaled_batch(len(users), cfg.batch_size, cfg.lr, cfg.max_steps_per_epoch)
        self.batch_growth_ = size / cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for start in range(0, len(users), size):
            batch = slice(start, start + size)
            loss = self.batch_loss(users[batch], items[batch], negatives[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(users[batch])
        return total / len(users)

    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            user_table, _ = self.tables()
            return user_table[torch.as_tensor(users, device=self.device)].float().cpu().numpy()

    def item_vectors(self) -> np.ndarray:
        with torch.no_grad():
            return self.tables()[1].float().cpu().numpy()
