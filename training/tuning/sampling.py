"""Adaptive user sampling for the instruction set (PAPER.md), and uniform sampling for ablation.

Draw N users with replacement:
  importance  0.6 N draws, P(u) proportional to log(number of liked training items);
  clustering  K-means (k=10) on backbone user embeddings; cluster c gets round(0.6 N |c|/|U|)
              draws, uniform inside the cluster;
  penalty     both lists are merged and N users are drawn from the merged list with weight
              0.95^(count_u - 1), count_u being how often u occurs in it, so a user drawn often
              is drawn less.
Decisions where the paper is vague: log(1 + n) instead of log(n) so users with one like keep a
non-zero weight; the penalty draw is without replacement from the merged list's entries when N
does not exceed its length (each entry is one draw), with replacement otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

METHODS = ("adaptive", "uniform", "importance", "clustering")


@dataclass
class SampleReport:
    method: str
    draws: np.ndarray  # user indices, one per draw (repeats allowed)
    cluster_of: np.ndarray | None = None  # cluster id per user (clustering and adaptive)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def distinct(self) -> int:
        return int(len(np.unique(self.draws)))

    def cluster_counts(self) -> dict[int, int]:
        if self.cluster_of is None:
            return {}
        return dict(sorted(Counter(self.cluster_of[self.draws].tolist()).items()))

    def describe(self) -> str:
        lines = [f"{self.method}: {len(self.draws)} draws, {self.distinct} distinct users"]
        if self.cluster_of is not None:
            lines.append("draws per cluster: " + ", ".join(f"{c}: {n}" for c, n in self.cluster_counts().items()))
        return "\n".join(lines)


def importance_draws(liked_counts: np.ndarray, n: int, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    weights = np.log1p(liked_counts[users].astype(np.float64))
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    return rng.choice(users, size=n, replace=True, p=weights / weights.sum())


def kmeans_clusters(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = min(k, len(embeddings))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embeddings)


def clustering_draws(cluster_of_users: np.ndarray, n: int, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    """Each cluster gets draws in proportion to its size (largest remainder), uniform inside it."""
    clusters, sizes = np.unique(cluster_of_users, return_counts=True)
    exact = n * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota))[: n - quota.sum()]] += 1
    draws = [rng.choice(users[cluster_of_users == c], size=q, replace=True) for c, q in zip(clusters, quota) if q]
    return np.concatenate(draws) if draws else np.empty(0, dtype=users.dtype)


def repetition_penalty_draws(merged: np.ndarray, n: int, rng: np.random.Generator, decay: float = 0.95) -> np.ndarray:
    counts = Counter(merged.tolist())
    weights = np.array([decay ** (counts[u] - 1) for u in merged.tolist()], dtype=np.float64)
    replace = n > len(merged)
    return rng.choice(merged, size=n, replace=replace, p=weights / weights.sum())


def sample_users(
    method: str,
    n: int,
    users: np.ndarray,
    liked_counts: np.ndarray,
    embeddings: np.ndarray | None = None,
    *,
    k: int = 10,
    share: float = 0.6,
    decay: float = 0.95,
    seed: int = 2024,
) -> SampleReport:
    """Draw `n` users (indices from `users`) by `method`; `embeddings` rows align with `users`."""
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {METHODS}")
    rng = np.random.default_rng(seed)
    users = np.asarray(users)
    part = int(round(share * n))
    cluster_of = None
    if method in ("clustering", "adaptive"):
        if embeddings is None:
            raise ValueError(f"{method} sampling needs backbone user embeddings")
        labels = kmeans_clusters(np.asarray(embeddings), k, seed)
        cluster_of = np.full(int(users.max()) + 1, -1)
        cluster_of[users] = labels
    if method == "uniform":
        draws = rng.choice(users, size=n, replace=True)
    elif method == "importance":
        draws = importance_draws(liked_counts, n, rng, users)
    elif method == "clustering":
        draws = clustering_draws(cluster_of[users], n, rng, users)
    else:
        merged = np.concatenate([importance_draws(liked_counts, part, rng, users), clustering_draws(cluster_of[users], part, rng, users)])
        draws = repetition_penalty_draws(merged, n, rng, decay)
    return SampleReport(method=method, draws=draws, cluster_of=cluster_of)
