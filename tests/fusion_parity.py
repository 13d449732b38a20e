"""Fixed synthetic inputs of the fusion parity test (tests/unit/test_fusion_parity.py).

`tests/unit/fixtures/fusion_parity.json` holds what the code before the one-fusion refactor (commit
9c6e013: fusion in the engine, in the gateway and in training/evaluation/evaluate.py, fitting in
service/ranking/fusion.py) computed from exactly these inputs; the test recomputes them through the
code of today. Everything here is seeded: the same inputs on every run and machine.
"""

from __future__ import annotations

import numpy as np

from service.backbones.feature_source import FeatureInputs
from service.ranking.features import CandidateContext, non_llm_features
from tests.conftest import synthetic_dataset
from training.data.split import leave_one_out
from training.evaluation.engine_runs import Record

M = 10
VALID_USERS, TEST_USERS = 120, 60
FEATURE_BACKBONES = ("mf", "lightgcn")
BACKBONE_PRIOR = (1 / np.arange(1, M + 1)) / (1 / np.arange(1, M + 1)).sum()  # the held-out item is often near the top


def _records(split, rng, stage: str, users: range, llm_signal: float) -> list[Record]:
    """Engine outputs of a tuned model whose pointwise and listwise answers lean towards the held-out
    item (`llm_signal`; the backbone order knows something too), with a pairwise task that knows nothing; a few users lack a task (dropped)
    or have constant answers, and some users' item is not among the candidates."""
    out = []
    for u in users:
        items = [int(i) for i in rng.choice(split.n_items, size=M, replace=False)]
        hit = rng.random() < 0.8
        target = items[int(rng.choice(M, p=BACKBONE_PRIOR))] if hit else next(i for i in range(split.n_items) if i not in items)
        is_target = np.array([i == target for i in items], dtype=float)
        utilities = {
            "pointwise": (rng.normal(3, 1, M) + llm_signal * is_target).tolist(),
            "pairwise": rng.integers(0, 3, M).astype(float).tolist(),
            "listwise": (rng.dirichlet(np.ones(M)) + 0.3 * llm_signal * is_target).tolist(),
        }
        kind = u % 7
        if kind == 1:
            del utilities["pairwise"]  # dropped at the deadline
        elif kind == 2:
            utilities["pointwise"] = [3.0] * M  # constant: no ranking information
        elif kind == 3:
            utilities = {}  # every task dropped
        out.append(Record(user=u, stage=stage, m=M, items=items, target=int(target), utilities=utilities, invalid={}, dropped={},
                          seconds=0.0, backbone_scores=sorted(rng.normal(0, 1, M).tolist(), reverse=True)))
    return out


def inputs():
    """(split, validation records, test records, popularity, {stage: {backbone: scores}})."""
    split = leave_one_out(synthetic_dataset(n_users=VALID_USERS + TEST_USERS, n_items=60, per_user=12, seed=5))
    rng = np.random.default_rng(14)
    valid = _records(split, rng, "valid", range(VALID_USERS), llm_signal=0.8)
    test = _records(split, rng, "test", range(VALID_USERS, VALID_USERS + TEST_USERS), llm_signal=0.8)
    popularity = rng.integers(0, 40, split.n_items).astype(float)
    scores = {stage: {name: rng.normal(0, 1, (split.n_users, split.n_items)) for name in FEATURE_BACKBONES} for stage in ("valid", "test")}
    return split, valid, test, popularity, scores


def matrix_inputs(split, rec: Record, popularity: np.ndarray, stage_scores: dict[str, np.ndarray]) -> FeatureInputs:
    """The learned ranker's inputs from score matrices and the record's own backbone scores (as the
    code before the serving policy built them), in the shape `make eval` now gets from the gateway's
    builder (`FeatureSource.inputs`)."""
    ds = split.dataset
    by_backbone = {name: scores[rec.user, rec.items] for name, scores in stage_scores.items()}
    ctx = CandidateContext([ds.items[i].genres for i in split.history(rec.user, rec.stage)], [ds.items[i].genres for i in rec.items],
                           popularity[rec.items], by_backbone)
    return FeatureInputs(np.asarray(rec.backbone_scores), non_llm_features(ctx), by_backbone)
