"""Fusion: one user's task utilities as one ranking of the m backbone candidates.

`fuse` is the one fusion: the gateway serves its order and scores, and evaluation measures the same
call. Candidates are indexed 0..m-1 in backbone order (index 0 is the backbone's best), so "backbone
rank" and "candidate index" are the same number.

Two methods:
- hybrid: the paper's fixed-weight sum  U = sum_t a_t * norm(U_t)  over the tasks that answered,
  plus  a_backbone * norm(m - rank)  when the weights name a backbone prior (`BACKBONE`);
- learned: a LightGBM LambdaRank model over the task utilities, the backbone's score and rank and the
  non-LLM features (`service.ranking.features`), boosted from the hybrid's ranking. It is fitted and
  guarded offline (`training/evaluation/fusion_selection.py`); serving loads it, predicts, and applies the
  fallback (the hybrid or the backbone order) that its fit decided.
With no task utilities and no learned model, the fused ranking is the backbone order.

One scaling rule, `minmax_normalise`, puts each task on [0, 1] inside the hybrid and makes the
response's relevance scores (`Fused.relevance`); a constant vector maps to 0 in both (see there).

Apart from `LearnedFusion.save` / `load` (explicit paths, the caller's choice) nothing here does I/O;
the only imports beyond the standard library are numpy and lightgbm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from service.ranking.tasks import LISTWISE, PAIRWISE, POINTWISE, TASKS

DEFAULT_WEIGHTS: Mapping[str, float] = {POINTWISE: 1 / 3, PAIRWISE: 1 / 3, LISTWISE: 1 / 3}
BACKBONE = "backbone"  # the hybrid weight of the backbone-rank prior (no task of that name)
BACKBONE_SCORE, BACKBONE_RANK = "backbone_score", "backbone_rank"
SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = 2  # 2: the prior ranking the trees correct, and the guard's margin
FALLBACKS = ("hybrid", "backbone")


# --------------------------------------------------------------------------------------------------
# The scaling rule and the hybrid
# --------------------------------------------------------------------------------------------------


def minmax_normalise(values: np.ndarray) -> np.ndarray:
    """norm(u)_i = (u_i - min u) / (max u - min u) over one user's candidates, in [0, 1].

    Min-max within the user puts ratings (1..5), pairwise wins (0..#pairs) and listwise points
    (0..m) on one scale and keeps each task's order, so a weight a_t means the same for every user.
    A constant vector maps to 0: it carries no ranking information, so in the hybrid it adds what
    a task that did not answer adds (nothing), and as a relevance score no candidate of the list is
    called more relevant than the others. Non-finite entries map to 0 and the min and max are taken
    over the finite ones.
    """
    u = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(u)
    out = np.zeros_like(u)
    if not finite.any():
        return out
    lo, hi = float(u[finite].min()), float(u[finite].max())
    if hi > lo:
        out[finite] = (u[finite] - lo) / (hi - lo)
    return out


def backbone_order_scores(m: int) -> np.ndarray:
    """m, m - 1, ..., 1: scores that rank the candidates in backbone order."""
    return np.arange(m, 0, -1, dtype=np.float64)


def hybrid_scores(utilities: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """U(i) = sum over the tasks t in `utilities` of a_t * norm(U_t)(i), norm = `minmax_normalise`,
    plus a_backbone * norm(m - i) when `weights` has a `BACKBONE` entry (a prior for the backbone's
    order; `training.evaluation.fusion_selection.select_hybrid_weights` tunes it).

    Only the tasks present are summed (a subset such as pointwise + listwise is fine); `weights`
    (default 1/3 each, as in the paper's figure) may name tasks that are absent, but every task
    present needs a weight. The weights are not renormalised: that would not change the order.
    Ties are left in the scores; `rank_by` breaks them by backbone order.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    if not utilities:
        raise ValueError("no task utilities to fuse")
    lengths = {len(u) for u in utilities.values()}
    if len(lengths) != 1:
        raise ValueError(f"task utilities differ in length: {sorted(lengths)}")
    total = np.zeros(lengths.pop())
    for task, u in utilities.items():
        if task not in TASKS:
            raise ValueError(f"{task!r} is not a task; the backbone prior is a weight, not a utility")
        if task not in weights:
            raise ValueError(f"no weight for task {task!r}")
        total += weights[task] * minmax_normalise(np.asarray(u, dtype=np.float64))
    if weights.get(BACKBONE):
        total += weights[BACKBONE] * minmax_normalise(backbone_order_scores(total.size))
    return total


def rank_by(scores: np.ndarray) -> list[int]:
    """Candidate indices best first: descending score, ties by backbone order (lower index first);
    NaN counts as the lowest score."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return [int(i) for i in np.lexsort((np.arange(s.size), -s))]


# --------------------------------------------------------------------------------------------------
# Features of the learned fusion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FusionFeatures:
    """One user's candidate rows (backbone order) and the column names, in column order."""

    values: np.ndarray  # (m, d) float64, NaN where a feature is unknown
    names: tuple[str, ...]

    @property
    def m(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]


def feature_matrix(
    m: int,
    utilities: Mapping[str, np.ndarray] | None = None,
    *,
    backbone_scores: np.ndarray | Sequence[float] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> FusionFeatures:
    """Rows = candidates 0..m-1; columns, in this order:
        pointwise, pairwise, listwise   raw task utilities (all NaN when the task did not answer;
                                        NaN entries allowed), not normalised: trees split on values
        backbone_score                  the backbone's score (NaN if unknown)
        backbone_rank                   0-based backbone rank = candidate index, always present so a
                                        learned model can always fall back on the backbone
        *extra                          conventional features (`features.non_llm_features`) in
                                        the mapping's order
    """
    utilities = utilities or {}
    if unknown := set(utilities) - set(TASKS):
        raise ValueError(f"unknown tasks {sorted(unknown)}")
    columns: dict[str, np.ndarray] = {}
    for name, col in ((POINTWISE, utilities.get(POINTWISE)), (PAIRWISE, utilities.get(PAIRWISE)), (LISTWISE, utilities.get(LISTWISE)), (BACKBONE_SCORE, backbone_scores)):
        columns[name] = np.full(m, np.nan) if col is None else np.asarray(col, dtype=np.float64)
    columns[BACKBONE_RANK] = np.arange(m, dtype=np.float64)
    for name, col in (extra or {}).items():
        if name in columns:
            raise ValueError(f"extra feature {name!r} clashes with a built-in one")
        columns[name] = np.asarray(col, dtype=np.float64)
    for name, col in columns.items():
        if col.shape != (m,):
            raise ValueError(f"feature {name!r} has shape {col.shape}, expected ({m},)")
    return FusionFeatures(values=np.column_stack(list(columns.values())).reshape(m, len(columns)), names=tuple(columns))


def task_utilities_of(features: FusionFeatures) -> dict[str, np.ndarray]:
    """The task columns of `features` that are not all NaN (the tasks that answered)."""
    return {t: features.column(t) for t in TASKS if t in features.names and not np.isnan(features.column(t)).all()}


def backbone_scores_of(features: FusionFeatures) -> np.ndarray:
    """Scores that rank candidates in backbone order: m - backbone_rank."""
    return features.m - features.column(BACKBONE_RANK)


def hybrid_scores_of(features: FusionFeatures, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """`hybrid_scores` over the task columns of `features`; all 0 (backbone order) without any."""
    utilities = task_utilities_of(features)
    return hybrid_scores(utilities, weights) if utilities else np.zeros(features.m)


def prior_scores_of(features: FusionFeatures, weights: Mapping[str, float], scale: float) -> np.ndarray:
    """The ranking the trees start from, as evenly spaced scores: scale (first) .. 0 (last).
    Ranks, not the hybrid's raw values, so one tree's step means the same for every user. Without
    task columns the hybrid is all zeros, which `rank_by` puts in backbone order."""
    base = hybrid_scores_of(features, weights)
    m = features.m
    scores = np.empty(m)
    scores[rank_by(base)] = scale * (np.arange(m - 1, -1, -1) / max(m - 1, 1))
    return scores


# --------------------------------------------------------------------------------------------------
# The learned fusion, as serving uses it
# --------------------------------------------------------------------------------------------------


class FusionModelError(ValueError):
    """A saved fusion model this release cannot read; the message names the file and the fix."""


def fusion_model_path(folder: Path, backbone: str, m: int, name: str = "learned") -> Path:
    """Where `make eval` saves a fitted fusion and the gateway looks for it (one naming for both):
    <folder>/<backbone>-m<m>-<name>.lgb, name "learned" (with LLM features) or "learned_no_llm"."""
    return Path(folder) / f"{backbone}-m{m}-{name}.lgb"


class LearnedFusion:
    """A fitted LightGBM LambdaRank fusion over `FusionFeatures`: its scores are the prior ranking
    (`prior_scores_of`, the hybrid's order) plus the trees' corrections.

    `fallback_` is what its fit decided to serve instead of the trees ("hybrid", "backbone", or None
    for the model itself) when cross-validation did not show them clearly better
    (`training.evaluation.fusion_selection.fit_learned_fusion`); `predict` applies it. `fit_details_` keeps how
    it was fitted (the training config, the guard's cross-validation) for inspection: saved and
    loaded as it is, never read to predict. Learned state lives in attributes ending in `_`.
    """

    def __init__(
        self,
        booster: lgb.Booster,
        feature_names: Sequence[str],
        *,
        hybrid_weights: Mapping[str, float] | None = None,
        prior_scale: float = 1.0,
        fallback: str | None = None,
        fit_details: Mapping[str, object] | None = None,
    ) -> None:
        if fallback not in (None, *FALLBACKS):
            raise ValueError(f"fallback {fallback!r} is none of {FALLBACKS}")
        if BACKBONE_RANK not in feature_names:
            raise ValueError(f"features must include {BACKBONE_RANK!r}")
        self.booster_ = booster
        self.feature_names_ = tuple(feature_names)
        self.hybrid_weights = dict(DEFAULT_WEIGHTS if hybrid_weights is None else hybrid_weights)
        self.prior_scale = float(prior_scale)
        self.fallback_ = fallback
        self.fit_details_ = dict(fit_details or {})

    def _check_names(self, features: FusionFeatures) -> None:
        if features.names != self.feature_names_:
            raise ValueError(f"feature names {features.names} differ from the fitted {self.feature_names_}")

    def prior(self, features: FusionFeatures) -> np.ndarray:
        return prior_scores_of(features, self.hybrid_weights, self.prior_scale)

    def tree_scores_rows(self, rows: np.ndarray) -> np.ndarray:
        """The trees' corrections for stacked rows already in `feature_names_` order (batch
        scoring); add each user's prior to get the model's scores."""
        return np.asarray(self.booster_.predict(rows), dtype=np.float64)

    def model_scores(self, features: FusionFeatures) -> np.ndarray:
        """The boosted model's scores (prior + trees), fallback ignored."""
        self._check_names(features)
        return self.tree_scores_rows(features.values) + self.prior(features)

    def predict(self, features: FusionFeatures) -> np.ndarray:
        """Scores, higher is better: the model's, or the hybrid's / backbone order's when its fit
        fell back."""
        if self.fallback_ == "hybrid":
            self._check_names(features)
            return hybrid_scores_of(features, self.hybrid_weights)
        if self.fallback_ == "backbone":
            self._check_names(features)
            return backbone_scores_of(features)
        return self.model_scores(features)

    def save(self, path: str | Path) -> None:
        """LightGBM's text model at `path`, and `path` + ".json": the feature names, the fallback,
        the prior's settings inside "config" (with the rest of the training config) and the guard's
        report. The format `make eval` has written since format 2, so older models load."""
        path = Path(path)
        self.booster_.save_model(str(path))
        config = {**dict(self.fit_details_.get("config") or {}), "hybrid_weights": self.hybrid_weights, "prior_scale": self.prior_scale}
        sidecar = {
            "format_version": FORMAT_VERSION,
            "feature_names": list(self.feature_names_),
            "config": config,
            "fallback": self.fallback_,
            "guard_report": self.fit_details_.get("guard_report"),
        }
        Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(sidecar, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> LearnedFusion:
        """The model saved at `path`; `FusionModelError` (one line naming the file) when it cannot
        be read by this release."""
        path = Path(path)
        sidecar_path = Path(str(path) + SIDECAR_SUFFIX)
        refit = "refit it with `make eval` or remove it"
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, ValueError) as exc:
            raise FusionModelError(f"{sidecar_path}: unreadable fusion sidecar ({type(exc).__name__}: {exc}); {refit}") from None
        version = sidecar.get("format_version") if isinstance(sidecar, dict) else None
        if version != FORMAT_VERSION:
            raise FusionModelError(f"{sidecar_path}: fusion model format {version!r}, this release reads format {FORMAT_VERSION}; {refit}")
        try:
            with path.open("rb") as fh:  # LightGBM would print its own error before raising
                if fh.readline().strip() != b"tree":
                    raise ValueError("not a LightGBM text model")
            config = sidecar["config"]
            booster = lgb.Booster(model_file=str(path))
            return cls(booster, sidecar["feature_names"], hybrid_weights=config["hybrid_weights"], prior_scale=config["prior_scale"],
                       fallback=sidecar["fallback"] or None, fit_details={"config": config, "guard_report": sidecar.get("guard_report")})
        except (OSError, KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise FusionModelError(f"{path}: not a fusion model this release reads ({type(exc).__name__}: {exc}); {refit}") from None


# --------------------------------------------------------------------------------------------------
# The one fusion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Fused:
    """One user's fused ranking."""

    scores: np.ndarray  # (m,) higher is better; -inf where the fusion gave no finite score
    order: list[int]  # candidate indices best first, ties by backbone order
    method: str  # "learned", "hybrid", or "backbone" (no task answered and no learned model)

    @property
    def relevance(self) -> np.ndarray:
        """The scores on [0, 1] within this list (`minmax_normalise`): 1 for the best, 0 for the
        worst, 0 for all when nothing tells the candidates apart, and 0 for a non-finite score."""
        return minmax_normalise(self.scores)


def fuse(
    m: int,
    utilities: Mapping[str, np.ndarray],
    *,
    weights: Mapping[str, float] | None = None,
    learned: LearnedFusion | None = None,
    backbone_scores: np.ndarray | Sequence[float] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> Fused:
    """Fuse one user's task utilities (cached or fresh, any subset of the tasks) into a ranking of
    its m candidates.

    With `learned`, its prediction on `feature_matrix(m, utilities, backbone_scores, extra)` (the
    non-LLM inputs are those it was fitted on; tasks that did not answer are NaN columns); else the
    hybrid of `utilities` with `weights` (default `DEFAULT_WEIGHTS`); with neither, the backbone
    order. A non-finite fused score (a fault, never expected) ranks last."""
    for task, u in utilities.items():
        if len(u) != m:
            raise ValueError(f"{task} utility has {len(u)} values for {m} candidates")
    if learned is not None:
        scores, method = learned.predict(feature_matrix(m, utilities, backbone_scores=backbone_scores, extra=extra)), "learned"
    elif utilities:
        scores, method = hybrid_scores(utilities, weights), "hybrid"
    else:
        scores, method = backbone_order_scores(m), "backbone"
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    return Fused(scores=scores, order=rank_by(scores), method=method)
