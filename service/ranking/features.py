"""The learned fusion's non-LLM features, one builder for evaluation and the gateway.

Per candidate (backbone order): log popularity (likes in the training period), genre overlap with
all of the user's likes and with the most recent ones (recency), and for every scoring backbone at
hand its score and its rank among the candidates. The other backbones are what a non-LLM ensemble
knows (SASRec's order often beats LightGCN's on the same list), so "what the LLM adds" is measured
against a ranker that has them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.ranking.fusion import rank_by

RECENT_LIKES = 5  # the likes "recent_genre_overlap" reads


@dataclass(frozen=True)
class CandidateContext:
    liked_genres: Sequence[Sequence[str]]  # genres of the user's liked items, time order (oldest first)
    candidate_genres: Sequence[Sequence[str]]
    candidate_popularity: Sequence[float]  # training-period likes of each candidate
    backbone_scores: Mapping[str, Sequence[float]] = field(default_factory=dict)  # name -> score per candidate


def genre_overlap(liked_genres: Sequence[Sequence[str]], candidate_genres: Sequence[Sequence[str]]) -> np.ndarray:
    """Per candidate: how often its genres occur among the user's liked items, per liked item."""
    counts: dict[str, int] = {}
    for genres in liked_genres:
        for g in genres:
            counts[g] = counts.get(g, 0) + 1
    total = max(1, len(liked_genres))
    return np.asarray([sum(counts.get(g, 0) for g in genres) / total for genres in candidate_genres], dtype=float)


def rank_among(scores: Sequence[float]) -> np.ndarray:
    """0-based rank of each candidate by score, best first, in `rank_by`'s order (ties keep list
    order, NaN last)."""
    ranks = np.empty(len(scores), dtype=float)
    ranks[rank_by(scores)] = np.arange(len(scores))
    return ranks


def non_llm_features(ctx: CandidateContext) -> dict[str, np.ndarray]:
    liked = list(ctx.liked_genres)
    out = {
        "log_popularity": np.log1p(np.asarray(ctx.candidate_popularity, dtype=float)),
        "genre_overlap": genre_overlap(liked, ctx.candidate_genres),
        "recent_genre_overlap": genre_overlap(liked[-RECENT_LIKES:], ctx.candidate_genres),
    }
    for name in sorted(ctx.backbone_scores):
        scores = np.asarray(ctx.backbone_scores[name], dtype=float)
        out[f"{name}_score"] = scores
        out[f"{name}_rank"] = rank_among(scores)
    return out
