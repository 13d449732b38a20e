"""LightGCN (He et al. 2020): MF whose embeddings are averaged over K rounds of graph propagation.

The graph is the symmetric-normalised user-item adjacency D^-1/2 A D^-1/2 of the training likes;
there are no feature transforms or non-linearities, so the only parameters are the ego embeddings
(the same tables as MF) and the BPR loss, sampler and epoch loop come from mf.py.

Cost: every training step propagates the whole graph (K sparse products forward, K backward), which
costs in proportion to the likes. An epoch therefore takes at most `max_steps_per_epoch` steps (the
batch grows with the data above ML-100K's size, base.scaled_batch), so an epoch's propagations stay
a constant number and its time grows linearly with the likes, not with their square. Outside
training the propagated tables are computed once per set of weights and reused for scoring.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from training.backbones.mf import MF
from training.data.split import Split


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device: torch.device) -> torch.Tensor:
    """Sparse CSR (n_users + n_items)^2 matrix D^-1/2 A D^-1/2; users first, then items. Symmetric."""
    keys = np.unique(users * n_items + items)  # a repeated like is still one edge
    users, items = keys // n_items, keys % n_items
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    degree = np.bincount(rows, minlength=n_users + n_items).astype(np.float32)
    # Nodes without training likes stay isolated (their row is empty) instead of dividing by zero.
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    values = inv_sqrt[rows] * inv_sqrt[cols]
    size = n_users + n_items
    with warnings.catch_warnings():
        # CSR is "beta" in torch but is what makes sparse @ dense fast on CPU; the indices are
        # built above, so torch's invariant-check notice (raised by some versions) is noise too.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        coo = torch.sparse_coo_tensor(np.stack([rows, cols]), values, (size, size), device=device)
        return coo.coalesce().to_sparse_csr()


class SymmetricSpmm(torch.autograd.Function):
    """`graph @ x` for a symmetric sparse graph, with the backward pass reusing `graph` as its own transpose.

    Autograd's generic sparse backward transposes the graph on every call; that made propagation
    about 5x slower on CPU and dominated LightGCN's training time.
    """

    @staticmethod
    def forward(ctx, graph: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        return torch.sparse.mm(graph, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.graph, grad)


class LightGCN(MF):
    name = "lightgcn"

    class Config(MF.Config):
        n_layers: int = 3
        reg: float = 1e-4
        lr: float = 1e-2
        batch_size: int = 2048  # each step propagates the whole graph, so fewer, larger steps
        max_steps_per_epoch: int = 32  # ML-100K takes 27; above, the batch grows (see the module docstring)

    config: Config

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Training likes as (user, item) rows: the graph is rebuilt from them after `load`.
        self.edges_: np.ndarray | None = None
        self.graph_: torch.Tensor | None = None
        self.propagations_ = 0  # full-graph propagations so far (a measure of training cost)
        self.cached_tables_: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def prepare(self, split: Split) -> None:
        super().prepare(split)
        self.set_edges(np.stack([self.sampler_.users, self.sampler_.items], axis=1))

    def set_edges(self, edges: np.ndarray) -> None:
        self.edges_ = edges
        self.graph_ = normalized_adjacency(edges[:, 0], edges[:, 1], self.n_users, self.n_items, self.device)
        self.cached_tables_ = None

    def propagate(self, graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of layers 0..K of the embeddings, layer k+1 = graph @ layer k."""
        self.propagations_ += 1
        layer = torch.cat([self.module.user.weight, self.module.item.weight])
        total = layer
        for _ in range(self.config.n_layers):
            layer = SymmetricSpmm.apply(graph, layer)
            total = total + layer
        mean = total / (self.config.n_layers + 1)
        return mean[: self.n_users], mean[self.n_users :]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph_ is None:
            raise RuntimeError(f"{self.name}: no interaction graph yet; call fit() or load() first")
        if torch.is_grad_enabled():
            return self.propagate(self.graph_)
        # Without gradients (evaluation, scoring) the result depends only on the weights and the
        # graph: reuse it until either changes. A tensor's version counter moves with every in-place
        # update (an optimizer step, load_state_dict), so a stale table is never served.
        weights = (self.module.user.weight, self.module.item.weight)
        key = (id(self.graph_), *((id(w), w._version) for w in weights))
        if self.cached_tables_ is None or self.cached_tables_[0] != key:
            self.cached_tables_ = (key, self.propagate(self.graph_))
        return self.cached_tables_[1]

    def save_extra(self, folder: Path) -> None:
        if self.edges_ is not None:
            np.save(folder / "edges.npy", self.edges_)

    def load_extra(self, folder: Path) -> None:
        if (folder / "edges.npy").exists():
            self.set_edges(np.load(folder / "edges.npy"))
