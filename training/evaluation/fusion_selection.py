"""Offline selection of the fusion, run by `make eval` on the validation users and never by serving:
fitting the learned fusion (LightGBM LambdaRank), its cross-validation split by user, the guard that
keeps the hybrid or the backbone order unless the model is clearly better, and the grid search of
the hybrid's weights.

What is selected here is served through `service.ranking.fusion`: a `LearnedFusion` (saved with
its fallback and this module's config and report) and hybrid weights, both applied by `fuse`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import lightgbm as lgb
import numpy as np

from service.ranking.fusion import (
    BACKBONE,
    BACKBONE_RANK,
    DEFAULT_WEIGHTS,
    FusionFeatures,
    LearnedFusion,
    backbone_scores_of,
    fuse,
    hybrid_scores_of,
    prior_scores_of,
    rank_by,
    task_utilities_of,
)
from service.ranking.policy import clearly_better
from service.ranking.tasks import TASKS
from training.metrics import ndcg_at_k, ndcg_gains

# The hybrid's weights searched on validation users (the paper leaves them to us): each task and the
# backbone-rank prior.
WEIGHT_GRID: Mapping[str, tuple[float, ...]] = {**{t: (0.0, 0.25, 0.5, 1.0) for t in TASKS}, BACKBONE: (0.0, 0.5, 1.0, 2.0, 4.0)}


@dataclass(frozen=True)
class LearnedFusionConfig:
    """LambdaRank settings, kept small on purpose: few shallow trees, many rows per leaf, so a weak
    feature cannot be fitted to noise.

    The trees start from a prior ranking (LightGBM's init_score): the hybrid's when task columns are
    present, else the backbone order, as scores 1 (first) .. 0 (last) times `prior_scale`. So an
    untrained model is the hybrid, and small corrections move only candidates whose prior scores
    are close. `guard*` control the fall-back: the learned ranking replaces its fallback (the hybrid,
    or the backbone order when that is clearly better) only when its cross-validated NDCG@guard_k
    is clearly higher (`clearly_better`: a sign test or a one-sided paired t test at `guard_z`).
    """

    n_estimators: int = 50
    learning_rate: float = 0.05
    num_leaves: int = 7
    min_child_samples: int = 50
    reg_lambda: float = 1.0
    colsample_bytree: float = 1.0
    n_jobs: int = 1
    seed: int = 0
    prior_scale: float = 1.0
    guard: bool = True
    guard_folds: int = 5
    guard_k: int = 10
    guard_z: float = 2.25
    hybrid_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def lgbm_params(self) -> dict[str, object]:
        return {
            "objective": "lambdarank",
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "reg_lambda": self.reg_lambda,
            "colsample_bytree": self.colsample_bytree,
            "n_jobs": self.n_jobs,
            "random_state": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }


@dataclass(frozen=True, eq=False)
class UserGroup:
    """One user's training/evaluation group: features and labels (1 = the held-out item)."""

    features: FusionFeatures
    labels: np.ndarray  # (m,) int

    @classmethod
    def with_relevant(cls, features: FusionFeatures, relevant: int | None) -> UserGroup:
        """Label 1 for candidate `relevant`, 0 for the rest; None when the held-out item is not
        among the candidates (every ranking then scores 0 for this user)."""
        labels = np.zeros(features.m, dtype=np.int64)
        if relevant is not None:
            labels[relevant] = 1
        return cls(features=features, labels=labels)


@dataclass(frozen=True)
class CVReport:
    """Mean NDCG@k over the users of the held-out folds (each user held out exactly once).

    `learned` is the boosted model without its guard, `guarded` the model with the guard as
    `fit_learned_fusion` applies it (decided by an inner cross-validation on the training folds only,
    so it is an honest estimate), `hybrid` the fixed-weight sum, `backbone` the backbone order.
    `fallback_folds` counts the outer folds whose guard fell back (to the hybrid or the backbone).
    Per-fold means are kept for inspection.
    """

    k: int
    folds: int
    learned: float
    guarded: float
    hybrid: float
    backbone: float
    fallback_folds: int
    per_fold: list[dict[str, float]]


def _ndcg(order: Sequence[int], labels: np.ndarray, k: int) -> float:
    return ndcg_at_k(order, set(np.flatnonzero(labels > 0).tolist()), k)


def _stack(groups: Sequence[UserGroup]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    x = np.vstack([g.features.values for g in groups])
    y = np.concatenate([g.labels for g in groups]).astype(np.int64)
    return x, y, [g.features.m for g in groups]


def _user_folds(n_users: int, folds: int, seed: int) -> list[np.ndarray]:
    if not 2 <= folds <= n_users:
        raise ValueError(f"need 2 <= folds <= users, got folds={folds}, users={n_users}")
    order = np.random.default_rng(seed).permutation(n_users)
    return np.array_split(order, folds)


def _train(groups: Sequence[UserGroup], config: LearnedFusionConfig, names: tuple[str, ...]) -> lgb.Booster:
    x, y, sizes = _stack(groups)
    init = np.concatenate([prior_scores_of(g.features, config.hybrid_weights, config.prior_scale) for g in groups])
    ranker = lgb.LGBMRanker(**config.lgbm_params())
    ranker.fit(x, y, group=sizes, init_score=init, feature_name=list(names))
    return ranker.booster_


def fit_learned_fusion(groups: Sequence[UserGroup], config: LearnedFusionConfig | None = None) -> LearnedFusion:
    """LambdaRank over all `groups` (one query group per user), boosted from the prior ranking.

    With `config.guard` it first cross-validates on those groups (folds split by user) and sets the
    fallback to the hybrid ("hybrid", or "backbone" when the backbone order is clearly better than
    the hybrid, or when there are no task columns) unless the learned ranking is clearly better than
    that fallback; the served model then predicts the fallback's scores. Small validation sets (a
    few dozen users whose held-out item is a candidate) make most differences noise, so "clearly"
    means a sign or paired test over the users at `guard_z`: without evidence the learned fusion is
    the hybrid, never a coin flip between near-equal rankings. The trees are still trained and saved,
    so the decision can be inspected and revisited; the guard's cross-validation (of unguarded
    models) is kept in `fit_details_["guard_report"]`.
    """
    config = config or LearnedFusionConfig()
    if not groups:
        raise ValueError("no groups to fit")
    names = groups[0].features.names
    if any(g.features.names != names for g in groups):
        raise ValueError("all groups must have the same feature names in the same order")
    if BACKBONE_RANK not in names:
        raise ValueError(f"features must include {BACKBONE_RANK!r}")
    fallback, report = None, None
    if config.guard:
        report, per_user = cross_validate(groups, replace(config, guard=False), folds=config.guard_folds, k=config.guard_k)
        # any group: a user the LLM was not asked about (no hit in the list, in offline evaluation) has none
        base = "hybrid" if any(task_utilities_of(g.features) for g in groups) else "backbone"
        if base == "hybrid" and clearly_better(per_user["backbone"], per_user["hybrid"], config.guard_z):
            base = "backbone"
        if not clearly_better(per_user["learned"], per_user[base], config.guard_z):
            fallback = base
    return LearnedFusion(
        _train(groups, config, names), names, hybrid_weights=config.hybrid_weights, prior_scale=config.prior_scale, fallback=fallback,
        fit_details={"config": asdict(config), "guard_report": asdict(report) if report else None},
    )


def cross_validate(groups: Sequence[UserGroup], config: LearnedFusionConfig, folds: int = 5, k: int = 10) -> tuple[CVReport, dict[str, np.ndarray]]:
    """K-fold cross-validation split by user (seeded by config.seed).

    For each fold a fresh model with `config` is fitted on the other folds (including its own guard
    when config.guard, decided on those folds only) and every held-out user's ranking is scored with
    NDCG@k, next to the hybrid's and the backbone's on the same users. Returns the report and each
    user's held-out NDCG@k per ranking ("learned", "guarded", "hybrid", "backbone"; index = position
    in `groups`), to compare two fusions fitted on the same users and folds."""
    kinds = ("learned", "guarded", "hybrid", "backbone")
    per_user = {key: np.zeros(len(groups)) for key in kinds}
    per_fold: list[dict[str, float]] = []
    fallback_folds = 0
    for test_idx in _user_folds(len(groups), folds, config.seed):
        test = {int(i) for i in test_idx}
        model = fit_learned_fusion([g for i, g in enumerate(groups) if i not in test], config)
        fallback_folds += int(model.fallback_ is not None)
        held_out = [groups[int(i)] for i in test_idx]
        # one booster call for the whole fold (per-call overhead dominates on small groups)
        x, _, sizes = _stack(held_out)
        trees = np.split(model.tree_scores_rows(x), np.cumsum(sizes)[:-1])
        for i, g, t in zip(test_idx, held_out, trees, strict=True):
            learned = t + model.prior(g.features)
            guarded = model.predict(g.features) if model.fallback_ else learned
            per_user["learned"][i] = _ndcg(rank_by(learned), g.labels, k)
            per_user["guarded"][i] = _ndcg(rank_by(guarded), g.labels, k)
            per_user["hybrid"][i] = _ndcg(rank_by(hybrid_scores_of(g.features, config.hybrid_weights)), g.labels, k)
            per_user["backbone"][i] = _ndcg(rank_by(backbone_scores_of(g.features)), g.labels, k)
        per_fold.append({key: float(per_user[key][test_idx].mean()) for key in kinds})
    report = CVReport(k=k, folds=folds, fallback_folds=fallback_folds, per_fold=per_fold, **{key: float(per_user[key].mean()) for key in kinds})
    return report, per_user


def select_hybrid_weights(users: Sequence[tuple[int, Mapping[str, np.ndarray], int | None]], k: int = 3,
                          grid: Mapping[str, Sequence[float]] = WEIGHT_GRID) -> dict[str, float]:
    """The hybrid's weights (tasks and the backbone prior) with the highest summed NDCG@k over
    `users`, each (m, task utilities, index of the relevant candidate or None), ranked by `fuse`.
    Ties go to the larger backbone weight, i.e. the more conservative ranking."""
    best, best_key = None, None
    names = list(grid)
    for combo in itertools.product(*(grid[n] for n in names)):
        weights = dict(zip(names, combo, strict=True))
        if not any(weights.values()):
            continue
        ranks = [fuse(m, utilities, weights=weights).order.index(rel) if rel is not None else -1 for m, utilities, rel in users]
        total = float(ndcg_gains(np.asarray(ranks), k).sum())
        key = (round(total, 9), weights.get(BACKBONE, 0.0))
        if best_key is None or key > best_key:
            best, best_key = weights, key
    return best
