"""The learned ranker's non-LLM inputs for one user's candidates, from live state: one builder for
`make eval` (fitting on the validation users, the test rows) and the gateway.

Inputs: the user's liked items in time order as of now (events included), each candidate's id and
genres, the feature backbones' scorers (`scorers`), and the popularity table the ranker was fitted
with (training-period likes, exported with the policy: a fixed property of the fitted model, as
its trees' thresholds are, refreshed when the policy is refitted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.backbones.scorers import BackboneScorer, load_scorer
from service.ranking.features import CandidateContext, non_llm_features, rank_among
from service.ranking.policy import rank_mean_scores


@dataclass(frozen=True)
class LikedItem:
    item_id: str
    genres: Sequence[str]


@dataclass(frozen=True)
class FeatureInputs:
    """What `fuse` takes besides the task utilities: the list backbone's scores and the extra
    columns, plus every feature backbone's scores (for the rank-mean ensemble)."""

    backbone_scores: np.ndarray
    extra: dict[str, np.ndarray]
    by_backbone: dict[str, np.ndarray]

    def rank_mean(self) -> np.ndarray:
        return rank_mean_scores([rank_among(s) for s in self.by_backbone.values()])


@dataclass(frozen=True, eq=False)
class FeatureSource:
    scorers: Mapping[str, BackboneScorer]  # feature backbone name -> scorer
    popularity: Mapping[str, float]  # item id -> training-period likes

    @classmethod
    def from_artifacts(cls, backbone_dirs: Mapping[str, Path], user_ids: Sequence[str], item_ids: Sequence[str],
                       popularity: Mapping[str, float]) -> FeatureSource:
        return cls({name: load_scorer(folder, user_ids, item_ids) for name, folder in sorted(backbone_dirs.items())}, popularity)

    def inputs(self, list_backbone: str, user_id: str, liked: Sequence[LikedItem], candidate_ids: Sequence[str],
               candidate_genres: Sequence[Sequence[str]]) -> FeatureInputs:
        liked_ids = [e.item_id for e in liked]
        by_backbone = {name: scorer.scores(user_id, liked_ids, candidate_ids) for name, scorer in sorted(self.scorers.items())}
        ctx = CandidateContext(
            liked_genres=[e.genres for e in liked],
            candidate_genres=candidate_genres,
            candidate_popularity=[self.popularity.get(i, 0.0) for i in candidate_ids],
            backbone_scores=by_backbone,
        )
        own = by_backbone.get(list_backbone, np.full(len(candidate_ids), np.nan))
        return FeatureInputs(own, non_llm_features(ctx), by_backbone)
