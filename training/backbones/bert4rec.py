"""BERT4Rec (Sun et al. 2019): bidirectional encoder trained to fill in masked items (cloze).

At inference a [MASK] token is appended after the history and that position's output, passed
through the projection head, scores the catalogue. The output layer is the item embedding table plus
a per-item bias; the bias is folded into the vectors (a constant 1 on the user side, the bias on the
item side) so that scoring stays a plain dot product.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.backbones.sequence import (
    PAD,
    SequenceConfig,
    SequenceEncoder,
    SequentialBackbone,
    left_pad,
    minibatches,
    reseed_torch,
    training_sequences,
    windows,
)
from training.data.split import Split


class BERT4RecConfig(SequenceConfig):
    lr: float = 3e-3  # cloze training learns slower than next-item prediction; 1e-3 took ~50 epochs
    mask_prob: float = 0.2  # share of items hidden in a training sequence
    # Share of sequences where only the last item is hidden: the exact shape of the inference task.
    last_only_prob: float = 0.1


class BERT4RecModule(nn.Module):
    def __init__(self, n_items: int, cfg: BERT4RecConfig):
        super().__init__()
        self.n_items = n_items
        self.encoder = SequenceEncoder(n_items + 2, cfg, causal=False)  # PAD, items, [MASK]
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim))
        self.bias = nn.Parameter(torch.zeros(n_items))

    @property
    def mask_token(self) -> int:
        return self.n_items + 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, L, dim) projected states, ready to dot with the item table."""
        return self.head(self.encoder(tokens))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.encoder.item_table(self.n_items).T + self.bias


class BERT4Rec(SequentialBackbone):
    name = "bert4rec"
    Config = BERT4RecConfig
    config: BERT4RecConfig
    module: BERT4RecModule

    def build_module(self) -> BERT4RecModule:
        return BERT4RecModule(self.n_items, self.config)

    def cloze(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Hide items of left-padded rows; returns (inputs, labels) with labels PAD where not hidden."""
        real = tokens != PAD
        hidden = real & (rng.random(tokens.shape) < self.config.mask_prob)
        last_only = rng.random(len(tokens)) < self.config.last_only_prob
        hidden[last_only] = False
        hidden[:, -1] |= last_only
        # Every row must teach something: rows where nothing was drawn hide their last item.
        hidden[~hidden.any(axis=1), -1] = True
        inputs = np.where(hidden, self.module.mask_token, tokens)
        labels = np.where(hidden, tokens, PAD)
        return inputs, labels

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.module.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def train_epoch(self, split: Split, rng: np.random.Generator) -> float:
        optimizer = self.optimizer()
        reseed_torch(rng)
        L = self.config.max_len
        pieces = [w for seq in training_sequences(split, min_len=1) for w in windows(seq, L, L)]
        tokens = left_pad(pieces, L)
        losses = []
        for idx in minibatches(len(tokens), self.config.batch_size, rng):
            inputs, labels = (torch.from_numpy(a).to(self.device) for a in self.cloze(tokens[idx], rng))
            hidden = labels != PAD
            states = self.module(inputs)[hidden]
            # Always the full softmax, unlike SASRec and CL4SRec (SequentialBackbone.output_loss): with
            # uniformly sampled negatives BERT4Rec fell below popularity on 1M synthetic ratings in a
            # development run (test NDCG@10 0.024).
            loss = F.cross_entropy(self.module.logits(states), labels[hidden] - 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    def last_state(self, tokens: torch.Tensor) -> torch.Tensor:
        states = self.module(tokens)[:, -1]
        return torch.cat([states, torch.ones_like(states[:, :1])], dim=1)

    def vector_dim(self) -> int:
        return self.config.dim + 1

    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return self.encode_last(histories, suffix=self.module.mask_token)

    def item_vectors(self) -> np.ndarray:
        table = torch.cat([self.module.encoder.item_table(self.n_items), self.module.bias[:, None]], dim=1)
        return table.detach().float().cpu().numpy()
