"""Ranking features from a language model's item embeddings (each item's text: title, year, genres),
one implementation for the offline evaluation and for serving.

Two kinds, both computed per request from the user's liked items as of now:
- similarity: the cosine between a candidate's text embedding and the centroid of the user's likes,
  and its highest cosine to any of the last `RECENT_LIKES` likes;
- an item-item model (`ItemItemScorer`): a candidate's score is the sum of the weights from each
  liked item to it, the weights an EASE-style closed form fitted offline (in the text-regularised
  form, pulled towards the text similarities; `training.evaluation.lm_signals`).
Candidates or likes outside the table get NaN features or add nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.ranking.features import RECENT_LIKES, rank_among


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True, eq=False)
class TextSpace:
    """Centred, unit-length item embeddings (n_items, d) and the item id -> row index.

    Mean-pooled LM states share one large common direction (unrelated films at cosine ~0.9 with
    SmolLM2); subtracting the catalogue mean leaves what tells the items apart."""

    name: str
    vectors: np.ndarray
    item_index: Mapping[str, int]

    @classmethod
    def from_embeddings(cls, name: str, embeddings: np.ndarray, item_ids: Sequence[str]) -> TextSpace:
        v = np.asarray(embeddings, dtype=np.float64)
        return cls(name, unit_rows(v - v.mean(axis=0)), {item: i for i, item in enumerate(item_ids)})

    def rows(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        known = np.asarray([i in self.item_index for i in item_ids], dtype=bool)
        return np.asarray([self.item_index.get(i, 0) for i in item_ids], dtype=np.int64), known

    def features(self, liked_item_ids: Sequence[str], candidate_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """{f"{name}_centroid_cos", f"{name}_recent_max_cos"}: one value per candidate."""
        n = len(candidate_ids)
        centroid_cos, recent_max = np.full(n, np.nan), np.full(n, np.nan)
        liked_rows = [self.item_index[i] for i in liked_item_ids if i in self.item_index]
        rows, known = self.rows(candidate_ids)
        if liked_rows and known.any():
            cands = self.vectors[rows[known]].astype(np.float64)
            centroid = self.vectors[liked_rows].astype(np.float64).mean(axis=0)
            norm = np.linalg.norm(centroid)
            centroid_cos[known] = cands @ (centroid / norm) if norm > 0 else 0.0
            recent = self.vectors[liked_rows[-RECENT_LIKES:]].astype(np.float64)
            recent_max[known] = (cands @ recent.T).max(axis=1)
        return {f"{self.name}_centroid_cos": centroid_cos, f"{self.name}_recent_max_cos": recent_max}


@dataclass(frozen=True, eq=False)
class ItemItemScorer:
    """score(candidate) = sum over the liked items l of weights[l, candidate] (EASE's scoring rule)."""

    name: str
    weights: np.ndarray  # (n_items, n_items) float32, zero diagonal
    item_index: Mapping[str, int]

    def scores(self, liked_item_ids: Sequence[str], candidate_ids: Sequence[str]) -> np.ndarray:
        out = np.full(len(candidate_ids), np.nan)
        known = np.asarray([i in self.item_index for i in candidate_ids], dtype=bool)
        cols = np.asarray([self.item_index[i] for i, k in zip(candidate_ids, known, strict=True) if k], dtype=np.int64)
        liked = np.asarray(sorted({self.item_index[i] for i in liked_item_ids if i in self.item_index}), dtype=np.int64)
        if len(cols):
            out[known] = self.weights[np.ix_(liked, cols)].astype(np.float64).sum(axis=0) if len(liked) else 0.0
        return out

    def features(self, liked_item_ids: Sequence[str], candidate_ids: Sequence[str]) -> dict[str, np.ndarray]:
        scores = self.scores(liked_item_ids, candidate_ids)
        return {f"{self.name}_score": scores, f"{self.name}_rank": rank_among(scores)}
