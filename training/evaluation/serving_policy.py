"""The serving policy, fitted on the validation users: `make tune` runs it after the serving-task
validation (the LightGCN lists it serves) and `make eval` for each backbone it evaluates.

For every validation user: the candidates (the backbone's validation-time top-m), the learned
ranker's inputs built by `service.backbones.feature_source` (the gateway's builder) from the history
as of validation time, and the LLM task utilities the serving-task validation cached. Both learned
rankers are cross-validated by user; the rule (`service.ranking.policy.choose_method`) then picks
the cheapest method nothing dearer clearly beats. The policy folder holds the policy, the fitted
models and the popularity table the gateway needs; no test user is read here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from service.backbones.feature_source import FeatureInputs, FeatureSource, LikedItem
from service.ranking.fusion import DEFAULT_WEIGHTS, FusionFeatures, LearnedFusion, feature_matrix, fuse, rank_by
from service.ranking.policy import (
    GUARD_Z,
    METHODS,
    ServingPolicy,
    choose_method,
    clearly_better,
    policy_dir,
    write_popularity,
)
from training.data import Split
from training.evaluation.engine_runs import Record, relevant_index, utilities_of
from training.evaluation.fusion_selection import LearnedFusionConfig, UserGroup, cross_validate, fit_learned_fusion
from training.metrics import ndcg_at_k
from training.paired_stats import paired_comparison
from training.paths import Paths

console = Console(soft_wrap=True)
RULE = ("cheapest first (backbone < rank_mean_no_llm < learned_no_llm < hybrid < learned); a dearer method replaces the "
        "current choice only when its per-user validation NDCG@3 (cross-validated for the learned ones) is clearly better: "
        f"sign test or one-sided paired t test at z={GUARD_Z}; learned is a candidate only when it is clearly better than "
        "learned_no_llm and than its control, the same task scores shuffled within each list")


def shuffled_utilities(rec: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The control for the LLM task scores: each user's scores moved to other candidates of the same
    list, one permutation for all three tasks. The values, their spread within a list and how the
    tasks agree are kept; which candidate they belong to is destroyed. (Extra columns alone move a
    LambdaRank's held-out NDCG: from -0.0033 to +0.0076 on 942 validation users across the learning
    curve's models, `reports/learning-curve-ml-100k.md`.)"""
    order = rng.permutation(rec.m)
    return {task: values[order] for task, values in utilities_of(rec).items()}


def training_popularity(split: Split) -> dict[str, float]:
    """item id -> likes in the training period (what the ranker is fitted with and serves with)."""
    _, liked_items = split.liked_pairs()
    counts = np.bincount(liked_items, minlength=split.n_items)
    return {it.item_id: float(c) for it, c in zip(split.dataset.items, counts.tolist(), strict=True)}


def feature_source(paths: Paths, split: Split, names: Sequence[str]) -> FeatureSource:
    ds = split.dataset
    return FeatureSource.from_artifacts({n: paths.backbone_dir(ds.name, n) for n in names}, [u.user_id for u in ds.users],
                                        [it.item_id for it in ds.items], training_popularity(split))


def record_inputs(source: FeatureSource, split: Split, rec: Record, backbone: str) -> FeatureInputs:
    """The ranker's inputs for one record, from the history as of the record's stage."""
    ds = split.dataset
    liked = [LikedItem(ds.items[i].item_id, ds.items[i].genres) for i in split.history(rec.user, rec.stage)]
    cands = [ds.items[i] for i in rec.items]
    return source.inputs(backbone, ds.users[rec.user].user_id, liked, [c.item_id for c in cands], [c.genres for c in cands])


def features_of(rec: Record, inputs: FeatureInputs, with_llm: bool) -> FusionFeatures:
    return feature_matrix(rec.m, utilities_of(rec) if with_llm else None, backbone_scores=inputs.backbone_scores, extra=inputs.extra)


def method_order(method: str, rec: Record, inputs: FeatureInputs, models: dict[str, LearnedFusion],
                 hybrid_weights: dict[str, float] | None = None) -> list[int]:
    """The order a policy method gives one record, through the calls the gateway makes."""
    util = utilities_of(rec)
    if method == "backbone":
        return list(range(rec.m))
    if method == "rank_mean_no_llm":
        return rank_by(inputs.rank_mean())
    if method == "hybrid":
        return fuse(rec.m, util, weights=hybrid_weights).order
    if method in models:
        return fuse(rec.m, util if method == "learned" else {}, learned=models[method], backbone_scores=inputs.backbone_scores, extra=inputs.extra).order
    raise ValueError(f"no order for {method!r}")


@dataclass
class PolicyFit:
    policy: ServingPolicy
    models: dict[str, LearnedFusion]  # "learned_no_llm", "learned"
    cv: dict[str, dict]  # the cross-validation reports, as `make eval` prints them
    per_user: dict[str, np.ndarray]  # validation NDCG@3 per user of every candidate method


def _ndcg3(order: list[int], rel: int | None) -> float:
    return ndcg_at_k(order, set() if rel is None else {rel}, 3)


def fit_policy(split: Split, valid: list[Record], inputs: list[FeatureInputs], backbone: str, *, seed: int, feature_backbones: Sequence[str],
               model_run_key: str | None, data_fingerprint: str | None, machine: str | None = None, n_boot: int = 1000) -> PolicyFit:
    """Fits both learned rankers on `valid` (with `inputs`, in the same order) and chooses the method."""
    config = LearnedFusionConfig(guard_k=3, seed=seed)
    models: dict[str, LearnedFusion] = {}
    cv: dict[str, dict] = {}
    held_out: dict[str, np.ndarray] = {}
    guarded: dict[str, np.ndarray] = {}
    has_llm = any(r.utilities for r in valid)
    for name, with_llm in (("learned_no_llm", False), ("learned", True)):
        if with_llm and not has_llm:
            continue
        groups = [UserGroup.with_relevant(features_of(r, x, with_llm), relevant_index(r)) for r, x in zip(valid, inputs, strict=True)]
        report, per_user = cross_validate(groups, config, folds=5, k=3)
        models[name] = fit_learned_fusion(groups, config)
        # What is served when the fitted model keeps its trees is the trees, so their held-out
        # NDCG ("learned": each fold's trees fitted without its users) is what the rule compares;
        # the same per-user numbers the model's own guard tested. ("guarded" estimates a procedure
        # that sometimes serves the fallback instead, which is not what is served here.)
        held_out[name] = per_user["learned"]
        guarded[name] = per_user["guarded"]
        cv[name] = asdict(report) | {"fallback": models[name].fallback_}
    rel = [relevant_index(r) for r in valid]
    per_user = {m: np.asarray([_ndcg3(method_order(m, r, x, models), i) for r, x, i in zip(valid, inputs, rel, strict=True)])
                for m in ("backbone", "rank_mean_no_llm", *(("hybrid",) if has_llm else ()))}
    notes = []
    for name, model in models.items():
        if model.fallback_ is not None:  # served, it would be its fallback: not a candidate of its own
            notes.append(f"{name}: its guard fell back to {model.fallback_}, not a candidate")
        else:
            per_user[name] = held_out[name]
    if "learned" in cv:  # `make eval`'s `learned` row reads this whatever the model's own guard chose (as it always has)
        rng = np.random.default_rng(seed)
        control = [UserGroup.with_relevant(feature_matrix(r.m, shuffled_utilities(r, rng), backbone_scores=x.backbone_scores, extra=x.extra), relevant_index(r))
                   for r, x in zip(valid, inputs, strict=True)]
        control_report, control_per_user = cross_validate(control, config, folds=5, k=3)
        cv["learned_shuffled_control"] = asdict(control_report) | {"fallback": None, "control": True}  # cross-validated only, never fitted nor served
        beats_no_llm = clearly_better(guarded["learned"], guarded["learned_no_llm"])
        beats_control = clearly_better(guarded["learned"], control_per_user["guarded"])
        keeps = beats_no_llm and beats_control
        cv["learned"] |= {"uses_llm_features": keeps, "beats_shuffled_control": beats_control}
        if "learned" in per_user and not keeps:
            short = "learned_no_llm's" if not beats_no_llm else "the same scores shuffled within each list (its control)"
            notes.append(f"learned: its LLM features are not clearly better than {short}, not a candidate")
            per_user.pop("learned")
    method, reasons = choose_method(per_user)
    validation = {}
    for m in METHODS:
        if m in per_user:
            cmp = paired_comparison(per_user[m], per_user["backbone"], n_boot=n_boot, seed=seed)
            validation[m] = {"users": len(valid), "NDCG@3": float(per_user[m].mean()), "vs_backbone": cmp,
                             "held_out": m in models}
    policy = ServingPolicy(
        method=method, backbone=backbone, m=int(valid[0].m) if valid else 0, dataset=split.dataset.name, data_fingerprint=data_fingerprint,
        feature_backbones=tuple(feature_backbones), hybrid_weights=dict(DEFAULT_WEIGHTS), model_run_key=model_run_key, rule=RULE,
        reasons=tuple(notes + reasons), validation=validation,
        fitted_models={name: f"{name}.lgb" for name in models}, machine=machine,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return PolicyFit(policy, models, cv, per_user)


def save_policy(fit: PolicyFit, split: Split, model_dir: Path) -> Path:
    folder = policy_dir(model_dir, fit.policy.backbone)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in fit.models.items():
        model.save(folder / fit.policy.fitted_models[name])
    write_popularity(folder, training_popularity(split))
    return fit.policy.save(folder)


def policy_table(policy: ServingPolicy) -> Table:
    table = Table(title=f"serving policy for {policy.backbone} top-{policy.m} (validation users): [bold]{policy.method}[/bold]")
    for col in ("method", "NDCG@3", "vs backbone [95% CI]", "p"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, row in policy.validation.items():
        c = row["vs_backbone"]
        mark = " (served)" if method == policy.method else ""
        table.add_row(method + mark, f"{row['NDCG@3']:.4f}", f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]", f"{c['p_value']:.3f}")
    return table
