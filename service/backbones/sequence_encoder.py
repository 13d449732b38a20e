"""The sequential backbones' network, shared by training (which fits it) and serving (which scores
with it): item + positional embeddings, a pre-norm transformer encoder, the item table doubling as
the output layer.

Token convention: 0 is padding and item i is token i + 1, so the item table's row 0 never scores.
Histories are left-padded and keep their most recent `max_len` tokens, so the newest item always
sits at the last position and a learned positional embedding counts back from "now".

It lives in `service` because the gateway scores SASRec on each request's live history with torch on
the CPU: a 2-layer, 64-wide encoder over at most 50 tokens is about a millisecond there, and running
the very module training evaluates keeps served and offline scores identical. (An ONNX export was
tried: the dynamo exporter's graph disagreed with torch by up to 2.3 on the final state and the
legacy one emits an EyeLike node ONNX Runtime lacks.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

PAD = 0


class EncoderShape(Protocol):
    """What the encoder reads of a backbone's config (training's `SequenceConfig` has these)."""

    max_len: int
    dim: int
    layers: int
    heads: int
    dropout: float


def to_tokens(histories: Sequence[np.ndarray], max_len: int, suffix: int | None = None) -> np.ndarray:
    """(len(histories), max_len) int64: item + 1, left-padded with PAD, most recent items kept.

    `suffix` is a token appended after every history (BERT4Rec's [MASK]) before truncation."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, items in enumerate(histories):
        tokens = np.asarray(items, dtype=np.int64) + 1
        if suffix is not None:
            tokens = np.append(tokens, suffix)
        tokens = tokens[-max_len:]
        if len(tokens):
            out[row, max_len - len(tokens) :] = tokens
    return out


def attention_mask(tokens: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """(batch * heads, L, L) bool, True where a query may NOT look at a key.

    Padding keys are hidden, except that every position may see itself: a padding query (or the
    first real item under a causal mask) would otherwise have no key at all and produce NaNs."""
    length = tokens.shape[1]
    blocked = (tokens == PAD)[:, None, :].expand(-1, length, -1)
    if causal:
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
        blocked = blocked | future
    blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=tokens.device)
    return blocked.repeat_interleave(heads, dim=0)


class SequenceEncoder(nn.Module):
    """Item + positional embeddings followed by a pre-norm transformer encoder stack."""

    def __init__(self, n_tokens: int, cfg: EncoderShape, causal: bool):
        super().__init__()
        self.heads, self.causal = cfg.heads, causal
        self.item_emb = nn.Embedding(n_tokens, cfg.dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_norm = nn.LayerNorm(cfg.dim)
        self.emb_drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, dim_feedforward=4 * cfg.dim, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Pre-norm blocks leave the residual stream unnormalised, hence the final LayerNorm.
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False)
        # Small init as in SASRec/BERT4Rec reference code: the item table doubles as the output layer.
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, L, dim) states."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.emb_drop(self.emb_norm(self.item_emb(tokens) + self.pos_emb(positions)))
        return self.blocks(x, mask=attention_mask(tokens, self.heads, self.causal))

    def item_table(self, n_items: int) -> torch.Tensor:
        """Rows of the real items (tokens 1..n_items), the output embeddings."""
        return self.item_emb.weight[1 : n_items + 1]
