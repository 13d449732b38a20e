"""SASRec whose item embeddings start from a language model's item text embeddings (Harte et al.
2023 initialise BERT4Rec this way), and its control: the same initial vectors assigned to random
items, which keeps their scale and geometry and destroys what they say about each item.

The initial table is the LM embeddings (`training.evaluation.lm_embeddings`), centred, reduced to the encoder's
width by PCA and scaled to the standard deviation of the default initialisation, so the two runs
differ from plain SASRec only in where the item table starts. Training and serving are SASRec's.
"""

from __future__ import annotations

import numpy as np
import torch

from training.backbones.sasrec import SASRec, SASRecConfig
from training.backbones.sequence import SequenceEncoder

INIT_STD = 0.02  # SequenceEncoder's default item initialisation


class SASRecLMConfig(SASRecConfig):
    item_init: str = ""  # .npy of (n_items, hidden) LM item embeddings
    shuffle_init_seed: int | None = None  # the control: rows assigned to items by this permutation


def reduced_init(embeddings: np.ndarray, dim: int, shuffle_seed: int | None) -> np.ndarray:
    """(n_items, dim) float32: centred PCA of `embeddings`, scaled to INIT_STD; rows permuted when
    `shuffle_seed` is given."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    reduced = x @ vt[:dim].T
    reduced *= INIT_STD / reduced.std()
    if shuffle_seed is not None:
        reduced = reduced[np.random.default_rng(shuffle_seed).permutation(len(reduced))]
    return reduced.astype(np.float32)


class SASRecLM(SASRec):
    name = "sasrec_lm"
    Config = SASRecLMConfig
    config: SASRecLMConfig

    def build_module(self) -> SequenceEncoder:
        module = super().build_module()
        if self.config.item_init:
            table = reduced_init(np.load(self.config.item_init), self.config.dim, self.config.shuffle_init_seed)
            if table.shape[0] != self.n_items:
                raise ValueError(f"{self.config.item_init}: {table.shape[0]} items, the data has {self.n_items}")
            with torch.no_grad():
                module.item_emb.weight[1 : self.n_items + 1] = torch.from_numpy(table)
        return module


class SASRecLMShuffled(SASRecLM):
    name = "sasrec_lm_shuffled"
