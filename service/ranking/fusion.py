"""Fusion: turn the three task answers into one ranking of a user's m backbone candidates.

Candidates are indexed 0..m-1 in backbone order (index 0 is the backbone's best), and every function
here keeps that convention, so "backbone rank" and "candidate index" are the same number.

Two fusions:
- `hybrid_scores`: the paper's fixed-weight sum  U = sum_t a_t * norm(U_t)  over the tasks run;
- `LearnedFusion`: LightGBM LambdaRank over the task utilities, the backbone's score and rank and any
  conventional features, boosted from the hybrid's ranking (the trees learn corrections to it), with
  a guard that keeps the hybrid (or the backbone order) unless cross-validation shows the learned
  ranking beats it by more than its noise.

Apart from `LearnedFusion.save` / `load` (explicit paths, the caller's choice) nothing here does I/O;
the only imports beyond the standard library are numpy and lightgbm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

from service.ranking.tasks import LISTWISE, PAIRWISE, POINTWISE, TASKS

DEFAULT_WEIGHTS: Mapping[str, float] = {POINTWISE: 1 / 3, PAIRWISE: 1 / 3, LISTWISE: 1 / 3}
BACKBONE_SCORE, BACKBONE_RANK = "backbone_score", "backbone_rank"
SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = 2  # 2: the prior ranking the trees correct, and the guard's margin


def _is_valid(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# --------------------------------------------------------------------------------------------------
# Per-task utilities
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PointwiseUtility:
    values: np.ndarray  # (m,) U_point per candidate, repaired entries included
    repaired: np.ndarray  # (m,) bool, True where the answer was missing/invalid
    n_repaired: int


def pointwise_utility(
    expected_ratings: Sequence[float | None],
    *,
    min_rating: float = 1.0,
    rank_prior: float = 0.0,
    fallback_gap: float = 0.1,
) -> PointwiseUtility:
    """U_point(i) = r_i + rank_prior * (m - i) / m, with r_i the expected rating of candidate i.

    `rank_prior` is the paper code's small bonus for the backbone rank (0 here by default: the pure
    formula). A missing answer (None, NaN or inf) is repaired, never treated as neutral:
        floor      = min(min_rating, lowest valid U_point of this user)   (min_rating if none valid)
        U_point(i) = floor - fallback_gap * (i + 1) / m
    so every repaired candidate sits just below every answered one (within `fallback_gap`, so the
    per-user min-max normalisation of the answered ones is barely squeezed) and the repaired ones
    keep backbone order among themselves. If no answer is valid the utility is backbone order.
    """
    m = len(expected_ratings)
    ranks = np.arange(m, dtype=np.float64)
    valid = np.array([_is_valid(r) for r in expected_ratings], dtype=bool)
    values = np.full(m, np.nan)
    if valid.any():
        ratings = np.array([float(r) for r, ok in zip(expected_ratings, valid, strict=True) if ok])
        values[valid] = ratings + rank_prior * (m - ranks[valid]) / m
    floor = min(min_rating, float(values[valid].min())) if valid.any() else min_rating
    values[~valid] = floor - fallback_gap * (ranks[~valid] + 1) / max(m, 1)
    return PointwiseUtility(values=values, repaired=~valid, n_repaired=int((~valid).sum()))


@dataclass(frozen=True, eq=False)
class PairwiseUtility:
    values: np.ndarray  # (m,) U_pair per candidate
    comparisons: np.ndarray  # (m,) number of pairs each candidate took part in
    n_invalid: int  # pairs with a missing answer in either order (each side got 0.5)
    n_disagree: int  # hard mode: valid pairs whose two orders disagreed (each side got 0.5)


def pairwise_utility(
    m: int,
    pair_results: Sequence[tuple[int, int, float | None, float | None]],
    *,
    soft: bool = False,
) -> PairwiseUtility:
    """U_pair(i) = sum over i's pairs of its win credit; each pair hands out exactly 1 in total.

    A pair is (i, j, p_ij, p_ji): p_ij = P(Yes) to "prefer i over j?" asked with i as A, p_ji the
    same question with j as A. Hard credit (the paper's):
        p_ij > 0.5 and p_ji < 0.5  ->  i gets 1, j gets 0     (both orders say i)
        p_ij < 0.5 and p_ji > 0.5  ->  j gets 1, i gets 0     (both orders say j)
        otherwise (disagreement, or an exact 0.5)  ->  0.5 each
    Soft credit (`soft=True`): i gets (p_ij + 1 - p_ji) / 2, j gets 1 minus that.
    A missing answer in either order (None, NaN, outside [0, 1]) -> 0.5 each, counted in n_invalid.
    Candidates in no pair get 0 (the paper's m/2 disjoint pairs give every candidate one pair).
    """
    wins = np.zeros(m)
    comparisons = np.zeros(m, dtype=np.int64)
    n_invalid = n_disagree = 0
    for i, j, p_ij, p_ji in pair_results:
        if not (0 <= i < m and 0 <= j < m) or i == j:
            raise ValueError(f"pair ({i}, {j}) is not two distinct candidates of {m}")
        comparisons[i] += 1
        comparisons[j] += 1
        if not (_is_valid(p_ij) and _is_valid(p_ji) and 0 <= p_ij <= 1 and 0 <= p_ji <= 1):
            n_invalid += 1
            credit_i = 0.5
        elif soft:
            credit_i = (p_ij + 1.0 - p_ji) / 2.0
        elif p_ij > 0.5 and p_ji < 0.5:
            credit_i = 1.0
        elif p_ij < 0.5 and p_ji > 0.5:
            credit_i = 0.0
        else:
            n_disagree += 1
            credit_i = 0.5
        wins[i] += credit_i
        wins[j] += 1.0 - credit_i
    return PairwiseUtility(values=wins, comparisons=comparisons, n_invalid=n_invalid, n_disagree=n_disagree)


def listwise_utility(m: int, ranked_positions: Sequence[int]) -> np.ndarray:
    """U_list(i) = m - p(i), p(i) the 0-based position of candidate i in the returned list (the
    first gets m, the second m - 1, ...); 0 for a candidate missing from the list.

    `ranked_positions` are candidate indices, best first, already parsed and deduplicated
    (`scoring.parse_listwise`); an out-of-range or repeated index is a caller bug and raises.
    """
    if len(set(ranked_positions)) != len(ranked_positions):
        raise ValueError(f"repeated candidate in {list(ranked_positions)}")
    values = np.zeros(m)
    for position, candidate in enumerate(ranked_positions):
        if not 0 <= candidate < m:
            raise ValueError(f"candidate {candidate} is not one of {m}")
        values[candidate] = m - position
    return values


# --------------------------------------------------------------------------------------------------
# Fixed-weight hybrid
# --------------------------------------------------------------------------------------------------


def minmax_normalise(values: np.ndarray) -> np.ndarray:
    """norm(u)_i = (u_i - min u) / (max u - min u) over one user's candidates, in [0, 1].

    Min-max within the user puts ratings (1..5), pairwise wins (0..#pairs) and listwise points
    (0..m) on one scale and keeps each task's order, so a weight a_t means the same for every user.
    A constant vector carries no ranking information and maps to 0; non-finite entries map to 0
    and the min and max are taken over the finite ones.
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


def hybrid_scores(utilities: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """U(i) = sum over the tasks t in `utilities` of a_t * norm(U_t)(i), norm = `minmax_normalise`.

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
        if task not in weights:
            raise ValueError(f"no weight for task {task!r}")
        total += weights[task] * minmax_normalise(np.asarray(u, dtype=np.float64))
    return total


def rank_by(scores: np.ndarray) -> list[int]:
    """Candidate indices best first: descending score, ties by backbone order (lower index first);
    NaN counts as the lowest score."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return [int(i) for i in np.lexsort((np.arange(s.size), -s))]


# --------------------------------------------------------------------------------------------------
# Features for the learned fusion
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
    *,
    pointwise: np.ndarray | None = None,
    pairwise: np.ndarray | None = None,
    listwise: np.ndarray | None = None,
    backbone_scores: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> FusionFeatures:
    """Rows = candidates 0..m-1; columns, in this order:
        pointwise, pairwise, listwise   raw task utilities (all NaN when the task was not run;
                                        NaN entries allowed), not normalised: trees split on values
        backbone_score                  the backbone's score (NaN if unknown)
        backbone_rank                   0-based backbone rank = candidate index, always present so a
                                        learned model can always fall back on the backbone
        *extra                          conventional features (popularity, other backbones, genre
                                        overlap, ...) in the mapping's order
    """
    columns: dict[str, np.ndarray] = {}
    for name, col in ((POINTWISE, pointwise), (PAIRWISE, pairwise), (LISTWISE, listwise), (BACKBONE_SCORE, backbone_scores)):
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


def _ndcg(order: Sequence[int], labels: np.ndarray, k: int) -> float:
    """NDCG@k with binary gains: sum_{p<k, rel} 1/log2(p+2) / IDCG@k (0 if no relevant item).
    Same formula as training.metrics.ndcg_at_k, repeated here to keep the core self-contained."""
    n_rel = int((labels > 0).sum())
    if n_rel == 0:
        return 0.0
    dcg = sum(1.0 / math.log2(p + 2) for p, c in enumerate(order[:k]) if labels[c] > 0)
    idcg = sum(1.0 / math.log2(p + 2) for p in range(min(k, n_rel)))
    return dcg / idcg


def backbone_scores_of(features: FusionFeatures) -> np.ndarray:
    """Scores that rank candidates in backbone order: m - backbone_rank."""
    return features.m - features.column(BACKBONE_RANK)


def hybrid_scores_of(features: FusionFeatures, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """`hybrid_scores` over the task columns of `features` that are not all NaN."""
    utilities = {
        t: features.column(t) for t in TASKS if t in features.names and not np.isnan(features.column(t)).all()
    }
    return hybrid_scores(utilities, weights) if utilities else np.zeros(features.m)


# --------------------------------------------------------------------------------------------------
# Learned fusion
# --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class CVReport:
    """Mean NDCG@k over the users of the held-out folds (each user held out exactly once).

    `learned` is the boosted model without its guard, `guarded` the model with the guard as `fit`
    applies it (decided by an inner cross-validation on the training folds only, so it is an honest
    estimate), `hybrid` the fixed-weight sum, `backbone` the backbone order. `fallback_folds` counts
    the outer folds whose guard fell back (to the hybrid or the backbone). Per-fold means are kept
    for inspection.
    """

    k: int
    folds: int
    learned: float
    guarded: float
    hybrid: float
    backbone: float
    fallback_folds: int
    per_fold: list[dict[str, float]]


def _stack(groups: Sequence[UserGroup]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    x = np.vstack([g.features.values for g in groups])
    y = np.concatenate([g.labels for g in groups]).astype(np.int64)
    return x, y, [g.features.m for g in groups]


def _user_folds(n_users: int, folds: int, seed: int) -> list[np.ndarray]:
    if not 2 <= folds <= n_users:
        raise ValueError(f"need 2 <= folds <= users, got folds={folds}, users={n_users}")
    order = np.random.default_rng(seed).permutation(n_users)
    return np.array_split(order, folds)


def has_task_columns(features: FusionFeatures) -> bool:
    return any(t in features.names and not np.isnan(features.column(t)).all() for t in TASKS)


def prior_scores_of(features: FusionFeatures, weights: Mapping[str, float], scale: float) -> np.ndarray:
    """The ranking the trees start from, as evenly spaced scores: scale (first) .. 0 (last).
    Ranks, not the hybrid's raw values, so one tree's step means the same for every user. Without
    task columns the hybrid is all zeros, which `rank_by` puts in backbone order."""
    base = hybrid_scores_of(features, weights)
    m = features.m
    scores = np.empty(m)
    scores[rank_by(base)] = scale * (np.arange(m - 1, -1, -1) / max(m - 1, 1))
    return scores


def clearly_better(a: np.ndarray, b: np.ndarray, z: float, min_users: int = 10) -> bool:
    """Per-user scores a beat b: at least `min_users` users' scores differ, and either test says so
    at z: a sign test (wins minus losses above z * sqrt(wins + losses)) or a one-sided paired t
    statistic over all users (the mean difference above z standard errors).

    The sign test catches many small consistent gains and ignores size; the paired test weighs how
    far each user's relevant item moved, which is what NDCG rewards, and catches large gains on
    fewer users. The sign test alone kept the backbone order although the cross-validated LambdaRank
    model was 25% better on held-out validation users (README, "learned fusion"); the t test alone
    missed a backbone clearly better than a noise hybrid on 80 users (tests/unit/test_fusion.py).
    Two tests at z = 2.25 make a false "better" about 2.4% likely on noise."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, losses = int((diff > 1e-12).sum()), int((diff < -1e-12).sum())
    n = wins + losses
    if n < min_users:
        return False
    sign = wins - losses > z * math.sqrt(n)
    paired = diff.mean() > z * diff.std(ddof=1) / math.sqrt(len(diff))
    return bool(sign or paired)


def fusion_model_path(folder: Path, backbone: str, m: int, name: str = "learned") -> Path:
    """Where `make eval` saves a fitted fusion and the gateway looks for it (one naming for both):
    <folder>/<backbone>-m<m>-<name>.lgb, name "learned" (with LLM features) or "learned_no_llm"."""
    return Path(folder) / f"{backbone}-m{m}-{name}.lgb"


class LearnedFusion:
    """LightGBM LambdaRank over `FusionFeatures`, one query group per user, boosted from the prior
    ranking (`prior_scores_of`): its scores are the prior plus the trees' corrections.

    `fit` trains on all groups. With `config.guard` it first cross-validates on those groups (folds
    split by user) and sets `fallback_` to the hybrid ("hybrid", or "backbone" when the backbone
    order is clearly better than the hybrid, or when there are no task columns) unless the learned
    ranking is clearly better than that fallback; `predict` then returns the fallback's scores. Small
    validation sets (a few dozen users whose held-out item is a candidate) make most differences
    noise, so "clearly" means a sign or paired test over the users at `guard_z`: without evidence the learned
    fusion is the hybrid, never a coin flip between near-equal rankings. The model is still trained
    and saved, so the decision can be inspected and revisited. `guard_report_` holds that
    cross-validation (of unguarded models); `cross_validated_ndcg` gives the honest estimate of the
    guarded model (`CVReport.guarded`). Learned state lives in attributes ending in `_`.
    """

    def __init__(self, config: LearnedFusionConfig | None = None) -> None:
        self.config = config or LearnedFusionConfig()
        self.booster_: lgb.Booster | None = None
        self.feature_names_: tuple[str, ...] | None = None
        self.fallback_: str | None = None  # None, "hybrid" or "backbone"
        self.guard_report_: CVReport | None = None

    # -- training --------------------------------------------------------------------------------

    def _prior(self, features: FusionFeatures) -> np.ndarray:
        return prior_scores_of(features, self.config.hybrid_weights, self.config.prior_scale)

    def _train(self, groups: Sequence[UserGroup]) -> lgb.Booster:
        x, y, sizes = _stack(groups)
        init = np.concatenate([self._prior(g.features) for g in groups])
        ranker = lgb.LGBMRanker(**self.config.lgbm_params())
        ranker.fit(x, y, group=sizes, init_score=init, feature_name=list(self.feature_names_ or ()))
        return ranker.booster_

    def fit(self, groups: Sequence[UserGroup]) -> LearnedFusion:
        if not groups:
            raise ValueError("no groups to fit")
        names = groups[0].features.names
        if any(g.features.names != names for g in groups):
            raise ValueError("all groups must have the same feature names in the same order")
        if BACKBONE_RANK not in names:
            raise ValueError(f"features must include {BACKBONE_RANK!r}")
        self.feature_names_ = names
        self.fallback_ = None
        self.guard_report_ = None
        if self.config.guard:
            inner = LearnedFusion(self._unguarded_config())
            report, per_user = inner._cross_validate(groups, folds=self.config.guard_folds, k=self.config.guard_k)
            self.guard_report_ = report
            z = self.config.guard_z
            base = "hybrid" if has_task_columns(groups[0].features) else "backbone"
            if base == "hybrid" and clearly_better(per_user["backbone"], per_user["hybrid"], z):
                base = "backbone"
            if not clearly_better(per_user["learned"], per_user[base], z):
                self.fallback_ = base
        self.booster_ = self._train(groups)
        return self

    def _unguarded_config(self) -> LearnedFusionConfig:
        return LearnedFusionConfig(**{**asdict(self.config), "guard": False})

    # -- inference -------------------------------------------------------------------------------

    def _check_names(self, features: FusionFeatures) -> None:
        if self.feature_names_ is not None and features.names != self.feature_names_:
            raise ValueError(f"feature names {features.names} differ from the fitted {self.feature_names_}")

    def model_scores(self, features: FusionFeatures) -> np.ndarray:
        """The boosted model's scores (prior + trees), guard ignored."""
        if self.booster_ is None or self.feature_names_ is None:
            raise RuntimeError("LearnedFusion is not fitted")
        self._check_names(features)
        return self.tree_scores_rows(features.values) + self._prior(features)

    def tree_scores_rows(self, rows: np.ndarray) -> np.ndarray:
        """The trees' corrections for stacked rows already in `feature_names_` order (batch
        scoring); add each user's prior to get the model's scores."""
        if self.booster_ is None:
            raise RuntimeError("LearnedFusion is not fitted")
        return np.asarray(self.booster_.predict(rows), dtype=np.float64)

    def predict(self, features: FusionFeatures) -> np.ndarray:
        """Scores, higher is better: the model's, or the hybrid's / backbone order when the guard
        fell back."""
        if self.fallback_:
            self._check_names(features)
            return self._fallback_scores(features, self.fallback_)
        return self.model_scores(features)

    def _fallback_scores(self, features: FusionFeatures, fallback: str) -> np.ndarray:
        if fallback == "hybrid":
            return hybrid_scores_of(features, self.config.hybrid_weights)
        return backbone_scores_of(features)

    def rank(self, features: FusionFeatures) -> list[int]:
        return rank_by(self.predict(features))

    # -- evaluation ------------------------------------------------------------------------------

    def cross_validated_ndcg(self, groups: Sequence[UserGroup], folds: int = 5, k: int = 10) -> CVReport:
        """K-fold cross-validation split by user (seeded by config.seed); does not change `self`.

        For each fold a fresh model with this config is fitted on the other folds (including its
        own guard when config.guard, decided on those folds only) and every held-out user's
        ranking is scored with NDCG@k, next to the hybrid's and the backbone's on the same users.
        """
        return self._cross_validate(groups, folds, k)[0]

    def cross_validated_per_user(self, groups: Sequence[UserGroup], folds: int = 5, k: int = 10) -> tuple[CVReport, dict[str, np.ndarray]]:
        """`cross_validated_ndcg` and each user's held-out NDCG@k per ranking ("learned",
        "guarded", "hybrid", "backbone"; index = position in `groups`), to compare two fusions
        fitted on the same users and folds."""
        return self._cross_validate(groups, folds, k)

    def _cross_validate(self, groups: Sequence[UserGroup], folds: int, k: int) -> tuple[CVReport, dict[str, np.ndarray]]:
        """The report and each user's NDCG@k per ranking (index = position in `groups`)."""
        kinds = ("learned", "guarded", "hybrid", "backbone")
        per_user = {key: np.zeros(len(groups)) for key in kinds}
        per_fold: list[dict[str, float]] = []
        fallback_folds = 0
        for test_idx in _user_folds(len(groups), folds, self.config.seed):
            test = {int(i) for i in test_idx}
            train = [g for i, g in enumerate(groups) if i not in test]
            held_out = [groups[int(i)] for i in test_idx]
            model = LearnedFusion(self.config).fit(train)
            fallback_folds += int(model.fallback_ is not None)
            # one booster call for the whole fold (per-call overhead dominates on small groups)
            x, _, sizes = _stack(held_out)
            trees = np.split(model.tree_scores_rows(x), np.cumsum(sizes)[:-1])
            for i, g, t in zip(test_idx, held_out, trees, strict=True):
                learned = t + model._prior(g.features)
                guarded = model._fallback_scores(g.features, model.fallback_) if model.fallback_ else learned
                per_user["learned"][i] = _ndcg(rank_by(learned), g.labels, k)
                per_user["guarded"][i] = _ndcg(rank_by(guarded), g.labels, k)
                per_user["hybrid"][i] = _ndcg(rank_by(hybrid_scores_of(g.features, self.config.hybrid_weights)), g.labels, k)
                per_user["backbone"][i] = _ndcg(rank_by(backbone_scores_of(g.features)), g.labels, k)
            per_fold.append({key: float(per_user[key][test_idx].mean()) for key in kinds})
        report = CVReport(k=k, folds=folds, fallback_folds=fallback_folds, per_fold=per_fold,
                          **{key: float(per_user[key].mean()) for key in kinds})
        return report, per_user

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """LightGBM's text model at `path`, and `path` + ".json" with the feature names, the config,
        the guard decision and its report."""
        if self.booster_ is None:
            raise RuntimeError("LearnedFusion is not fitted")
        path = Path(path)
        self.booster_.save_model(str(path))
        sidecar = {
            "format_version": FORMAT_VERSION,
            "feature_names": list(self.feature_names_ or ()),
            "config": asdict(self.config),
            "fallback": self.fallback_,
            "guard_report": asdict(self.guard_report_) if self.guard_report_ else None,
        }
        Path(str(path) + SIDECAR_SUFFIX).write_text(json.dumps(sidecar, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> LearnedFusion:
        path = Path(path)
        sidecar = json.loads(Path(str(path) + SIDECAR_SUFFIX).read_text())
        if sidecar.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported fusion model format {sidecar.get('format_version')!r}")
        fusion = cls(LearnedFusionConfig(**sidecar["config"]))
        fusion.booster_ = lgb.Booster(model_file=str(path))
        fusion.feature_names_ = tuple(sidecar["feature_names"])
        fusion.fallback_ = sidecar["fallback"] or None
        report = sidecar.get("guard_report")
        fusion.guard_report_ = CVReport(**report) if report else None
        return fusion
