"""Top-k ranking metrics as plain functions.

With one held-out item per user (leave-one-out) both reduce to the rank r (0-based) of that item:
  HR@k   = 1 if r < k else 0
  NDCG@k = 1 / log2(r + 2) if r < k else 0      (the ideal DCG of a single relevant item is 1)
The list forms below also handle several relevant items: NDCG@k = DCG@k / IDCG@k with binary gains.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

KS = (3, 5, 10)


def hit_rate_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """1.0 if any relevant item is among the first k of `ranked`, else 0.0."""
    return float(any(item in relevant for item in list(ranked)[:k]))


def ndcg_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / np.log2(pos + 2) for pos, item in enumerate(list(ranked)[:k]) if item in relevant)
    idcg = sum(1.0 / np.log2(pos + 2) for pos in range(min(k, len(relevant))))
    return float(dcg / idcg)


def hit_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k (1.0 or 0.0) given each user's 0-based rank of its single target (-1: absent)."""
    ranks = np.asarray(ranks)
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k of a single target: 1 / log2(rank + 2) inside the cut-off, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2), 0.0)


def hr_from_ranks(ranks: np.ndarray, k: int) -> float:
    """Mean HR@k over users."""
    gains = hit_gains(ranks, k)
    return float(gains.mean()) if gains.size else 0.0


def ndcg_from_ranks(ranks: np.ndarray, k: int) -> float:
    gains = ndcg_gains(ranks, k)
    return float(gains.mean()) if gains.size else 0.0


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hr_from_ranks(ranks, k)
        out[f"NDCG@{k}"] = ndcg_from_ranks(ranks, k)
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column, ties broken by column index (as a stable sort would).

    Masked entries must already be -inf in `scores`."""
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > target_scores) | ((scores == target_scores) & (cols < targets[:, None]))
    return ahead.sum(axis=1)
