"""CL4SRec (Xie et al. 2022): SASRec plus a contrastive loss between two augmented views of a sequence.

Each training input gets two views, each made by one augmentation drawn at random (crop a contiguous
piece, mask some items with a [MASK] token, reorder a contiguous piece). The encoder's last-position
states of the two views of the same sequence are pulled together and pushed away from the other
sequences of the batch (InfoNCE). Scoring is unchanged from SASRec.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from training.backbones.sasrec import SASRec, SASRecConfig
from training.backbones.sequence import PAD, left_pad


class CL4SRecConfig(SASRecConfig):
    # Each step encodes three batches (the input and two views); a higher lr and shorter patience
    # keep the CPU training time within a few minutes.
    lr: float = 2e-3
    patience: int = 4
    cl_weight: float = 0.1  # lambda: weight of the contrastive loss next to next-item prediction
    # Cosine similarity: raw dot products of unnormalised states let the contrastive term swamp
    # next-item prediction early in training (measured worse on ML-100K).
    similarity: Literal["dot", "cos"] = "cos"
    temperature: float = 0.5
    crop_ratio: float = 0.6  # eta: share of the sequence a crop keeps
    mask_ratio: float = 0.3  # gamma: share of items a mask hides
    reorder_ratio: float = 0.3  # beta: share of the sequence a reorder shuffles


class CL4SRec(SASRec):
    name = "cl4srec"
    Config = CL4SRecConfig
    config: CL4SRecConfig

    def n_tokens(self) -> int:
        return self.n_items + 2  # PAD, items, [MASK] for the mask augmentation

    @property
    def mask_token(self) -> int:
        return self.n_items + 1

    def augment(self, seq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One view of a token sequence, by crop, mask or reorder chosen uniformly."""
        n = len(seq)
        kind = rng.integers(3)
        if kind == 0:
            keep = max(1, int(self.config.crop_ratio * n))
            start = rng.integers(n - keep + 1)
            return seq[start : start + keep]
        if kind == 1:
            view = seq.copy()
            view[rng.random(n) < self.config.mask_ratio] = self.mask_token
            return view
        span = max(1, int(self.config.reorder_ratio * n))
        start = rng.integers(n - span + 1)
        view = seq.copy()
        view[start : start + span] = rng.permutation(view[start : start + span])
        return view

    def views(self, inputs: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [row[row != PAD] for row in inputs.cpu().numpy()]
        L = self.config.max_len
        first = left_pad([self.augment(r, rng) for r in rows], L)
        second = left_pad([self.augment(r, rng) for r in rows], L)
        return torch.from_numpy(first).to(self.device), torch.from_numpy(second).to(self.device)

    def info_nce(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """NT-Xent over 2B views: each view's positive is its twin, the other 2B - 2 are negatives."""
        z = torch.cat([a, b])
        if self.config.similarity == "cos":
            z = F.normalize(z, dim=1)
        sim = z @ z.T / self.config.temperature
        sim.fill_diagonal_(float("-inf"))
        n = len(a)
        twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(sim, twins)

    def batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        first, second = self.views(inputs, rng)
        # One encoder pass over both views (one batch of 2B) is cheaper than two.
        states = self.module(torch.cat([first, second]))[:, -1]
        contrast = self.info_nce(*states.chunk(2))
        return self.next_item_loss(self.module(inputs), targets) + self.config.cl_weight * contrast
