"""Pieces the sequential backbones share: history -> token batches, training windows; the encoder
itself is `service.backbones.sequence_encoder`'s (the gateway scores with the same module).

Token convention: 0 is padding and item i is token i + 1, so the item table's row 0 never scores.
Histories are left-padded and keep their most recent `max_len` tokens, so the newest item always sits
at the last position and a learned positional embedding counts back from "now".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from service.backbones.sequence_encoder import PAD, SequenceEncoder, attention_mask, to_tokens  # noqa: F401  (re-exported: one network for training and serving)
from training.backbones.base import Backbone, BackboneConfig
from training.data.split import Split


class SequenceConfig(BackboneConfig):
    """Defaults sized for ML-100K on a CPU; the sequential backbones extend this."""

    epochs: int = 200
    batch_size: int = 128
    eval_every: int = 2
    patience: int = 5
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    user_batch: int = 1024  # histories encoded at once by user_vectors
    # Output layer: a full softmax over the catalogue up to this many items (ML-100K's 1,682); above
    # it a sampled softmax over `negatives` items drawn uniformly per batch (shared by its positions),
    # since the output layer, not the encoder, is most of a step's work on a large catalogue.
    full_softmax_items: int = 2048
    negatives: int = 512


def left_pad(rows: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Stack token rows (already shifted, at most `max_len` long) into a left-padded int64 array."""
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            out[i, max_len - len(row) :] = row
    return out


def history_batch(histories: Sequence[np.ndarray], max_len: int, device: torch.device, suffix: int | None = None) -> torch.Tensor:
    return torch.from_numpy(to_tokens(histories, max_len, suffix)).to(device)


def windows(sequence: np.ndarray, length: int, stride: int) -> list[np.ndarray]:
    """Cut a sequence, from its end backwards, into pieces of at most `length` taken every `stride`.

    With `length = stride + 1` (next-item training) consecutive pieces overlap by one item, so every
    item after the first is a target exactly once; with `length = stride` they tile the sequence."""
    pieces = []
    end = len(sequence)
    while end > 0:
        pieces.append(sequence[max(0, end - length) : end])
        if end - length <= 0:
            break
        end -= stride
    return pieces


def training_sequences(split: Split, min_len: int) -> list[np.ndarray]:
    """Users' training liked sequences as token arrays, those shorter than `min_len` dropped."""
    seqs = (split.liked_sequence(u).astype(np.int64) + 1 for u in range(split.n_users))
    return [s for s in seqs if len(s) >= min_len]


def minibatches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def sampled_softmax_loss(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, n_negatives: int) -> torch.Tensor:
    """Cross-entropy of each state's target item against `n_negatives` items drawn uniformly.

    `states` (N, d), `targets` (N,) item indices into `table` (n_items, d). The negatives are shared
    by the N rows (one matrix product); a negative that is a row's own target is masked for that row.
    Uniform draws make log Q the same for every item, so no correction is needed."""
    negatives = torch.randint(0, len(table), (n_negatives,), device=states.device)
    positive = (states * table[targets]).sum(-1, keepdim=True)
    negative = (states @ table[negatives].T).masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(states), dtype=torch.long, device=states.device))


def reseed_torch(rng: np.random.Generator) -> None:
    """Dropout draws from torch's global generator; seeding it from the epoch's rng keeps runs repeatable."""
    torch.manual_seed(int(rng.integers(2**31)))


class SequentialBackbone(Backbone):
    """Shared plumbing: histories -> last-position states, batched and without gradients."""

    sequential = True
    config: SequenceConfig

    def encode_last(self, histories: Sequence[np.ndarray], suffix: int | None = None) -> np.ndarray:
        """Final-position output for each history, in eval mode, `user_batch` histories at a time."""
        was_training = self.module.training
        self.module.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(histories), self.config.user_batch):
                tokens = history_batch(histories[start : start + self.config.user_batch], self.config.max_len, self.device, suffix)
                out.append(self.last_state(tokens).float().cpu().numpy())
        self.module.train(was_training)
        if not out:
            return np.zeros((0, self.vector_dim()), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def last_state(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, d) user vectors; the default reads the encoder's last position."""
        return self.module(tokens)[:, -1]

    def vector_dim(self) -> int:
        return self.config.dim

    def output_loss(self, states: torch.Tensor, targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of (N, d) states against their target items (N,), 0-based: a full softmax
        on catalogues up to `full_softmax_items`, a sampled one above."""
        cfg = self.config
        if self.n_items <= cfg.full_softmax_items or cfg.negatives >= self.n_items:
            return F.cross_entropy(states @ table.T, targets)
        return sampled_softmax_loss(states, table, targets, cfg.negatives)
