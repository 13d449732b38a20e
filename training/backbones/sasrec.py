"""SASRec (Kang & McAuley 2018): causal self-attention over the liked history, next-item prediction.

Training predicts, at every position of each user's training liked sequence, the next liked item with
a full softmax over the catalogue (ML-100K's 1.7K items make this cheap, and it beats the paper's
sampled BCE here). The output layer is the item embedding table itself, so the user vector is the
last position's state and the item vector is the item's embedding row.
"""

from __future__ import annotations

import numpy as np
import torch

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


class SASRecConfig(SequenceConfig):
    pass


class SASRec(SequentialBackbone):
    name = "sasrec"
    serving_scorer = "causal_sequence"  # CL4SRec and the LM-initialised SASRecs inherit it
    Config = SASRecConfig
    config: SASRecConfig
    module: SequenceEncoder

    def n_tokens(self) -> int:
        """PAD plus the items; subclasses that need extra tokens (a [MASK]) add them here."""
        return self.n_items + 1

    def build_module(self) -> SequenceEncoder:
        return SequenceEncoder(self.n_tokens(), self.config, causal=True)

    def next_item_batches(self, split: Split, rng: np.random.Generator):
        """(inputs, targets) token tensors; every training item after a user's first is one target."""
        L = self.config.max_len
        pieces = [w for seq in training_sequences(split, min_len=2) for w in windows(seq, L + 1, L)]
        pieces = [w for w in pieces if len(w) >= 2]
        inputs = left_pad([w[:-1] for w in pieces], L)
        targets = left_pad([w[1:] for w in pieces], L)
        for idx in minibatches(len(pieces), self.config.batch_size, rng):
            yield torch.from_numpy(inputs[idx]).to(self.device), torch.from_numpy(targets[idx]).to(self.device)

    def next_item_loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at the non-padding positions (full softmax on ML-100K-sized catalogues)."""
        real = targets != PAD
        return self.output_loss(states[real], targets[real] - 1, self.module.item_table(self.n_items))

    def batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.next_item_loss(self.module(inputs), targets)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.module.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def train_epoch(self, split: Split, rng: np.random.Generator) -> float:
        optimizer = self.optimizer()
        reseed_torch(rng)
        losses = []
        for inputs, targets in self.next_item_batches(split, rng):
            loss = self.batch_loss(inputs, targets, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0

    def user_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return self.encode_last(histories)

    def item_vectors(self) -> np.ndarray:
        return self.module.item_table(self.n_items).detach().float().cpu().numpy()
