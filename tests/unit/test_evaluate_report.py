"""The offline evaluation's report arithmetic, on hand-made rank vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation.engine_runs import Record, target_rank
from training.evaluation.evaluate import metric_rows, moves, paired_rows


def record(items, target):
    return Record(user=0, stage="test", m=len(items), items=items, target=target, utilities={}, invalid={}, dropped={}, seconds=0.0)


def test_target_rank_is_its_position_in_the_reranked_list_or_minus_one():
    rec = record([10, 11, 12, 13], target=12)
    assert target_rank([0, 1, 2, 3], rec) == 2
    assert target_rank([2, 0, 1, 3], rec) == 0
    assert target_rank([0, 1, 2, 3], record([10, 11], target=99)) == -1


def test_metric_rows_cover_all_users_and_the_hit_subset():
    ranks = {"backbone": np.array([0, 4, -1, -1]), "hybrid": np.array([1, 0, -1, -1])}
    rows = {(r["method"], r["subset"]): r for r in metric_rows(ranks, ranks["backbone"] >= 0, m=10)}
    assert rows[("backbone", "all")]["users"] == 4 and rows[("backbone", "hit")]["users"] == 2
    assert rows[("backbone", "all")]["HR@3"] == pytest.approx(0.25)
    assert rows[("backbone", "hit")]["HR@5"] == pytest.approx(1.0)
    assert rows[("hybrid", "all")]["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1) / 4)


def test_moves_count_users_entering_and_leaving_the_top_k():
    ranks = {"backbone": np.array([0, 5, 2, -1]), "pairwise": np.array([4, 1, 2, -1])}
    assert moves(ranks, k=3) == {"pairwise": {"wrong_to_right": 1, "right_to_wrong": 1}}


def test_paired_rows_compare_every_method_with_each_reference_at_every_k_with_an_interval_around_the_difference():
    rng = np.random.default_rng(0)
    base = rng.integers(-1, 10, 300)
    better = np.where(base > 0, base - 1, base)  # moves every hit one place up
    out = {(p["method"], p["metric"], p["vs"]): p for p in paired_rows({"backbone": base, "x": better}, 10, 500, 0)}
    assert set(out) == {(method, f"{kind}@{k}", "backbone") for method in ("x",) for kind in ("HR", "NDCG") for k in (3, 5, 10)}
    ndcg3 = out[("x", "NDCG@3", "backbone")]
    assert ndcg3["ci_low"] <= ndcg3["diff"] <= ndcg3["ci_high"] and ndcg3["diff"] > 0


def fusion_records(split, rng, llm_signal: float, n: int = 240, m: int = 10):
    """Validation records whose pointwise utility points at the target with strength `llm_signal`
    (0: pure noise); the backbone order knows nothing."""
    out = []
    for u in range(n):
        items = [int(i) for i in rng.choice(split.n_items, size=m, replace=False)]
        target = items[int(rng.integers(0, m))]
        point = rng.normal(0, 1, m) + llm_signal * np.array([i == target for i in items])
        out.append(Record(user=u, stage="valid", m=m, items=items, target=target, utilities={"pointwise": point.tolist(), "pairwise": rng.normal(0, 1, m).tolist(), "listwise": rng.normal(0, 1, m).tolist()},
                          invalid={}, dropped={}, seconds=0.0, backbone_scores=rng.normal(0, 1, m).tolist()))
    return out


@pytest.fixture(scope="module")
def fusion_split():
    from tests.conftest import synthetic_dataset
    from training.data.split import leave_one_out

    return leave_one_out(synthetic_dataset(n_users=240, n_items=40))


def stage_scores_for(split, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 1, (split.n_users, split.n_items)) for name in ("mf", "lightgcn")}


def fit_on(split, records, scores, seed=0):
    from tests.fusion_parity import matrix_inputs
    from training.evaluation.serving_policy import fit_policy

    popularity = np.ones(split.n_items)
    inputs = [matrix_inputs(split, r, popularity, scores) for r in records]
    return fit_policy(split, records, inputs, "lightgcn", seed=seed, feature_backbones=tuple(scores), model_run_key=None, data_fingerprint=None, n_boot=100)


def test_learned_keeps_the_llm_features_only_when_cross_validation_shows_they_help(fusion_split):
    rng = np.random.default_rng(0)
    scores = stage_scores_for(fusion_split)
    helps = fit_on(fusion_split, fusion_records(fusion_split, rng, llm_signal=3.0), scores)
    assert helps.cv["learned"]["uses_llm_features"] is True
    # judged against its control too: the same scores shuffled within each list lose what points at the target
    assert helps.cv["learned"]["beats_shuffled_control"] is True
    assert helps.cv["learned_shuffled_control"]["learned"] < helps.cv["learned"]["learned"]
    assert helps.policy.method in ("hybrid", "learned") and helps.policy.tasks  # the LLM earned its place on validation
    noise = fit_on(fusion_split, fusion_records(fusion_split, rng, llm_signal=0.0), scores)
    assert noise.cv["learned"]["uses_llm_features"] is False
    assert noise.policy.method in ("backbone", "rank_mean_no_llm", "learned_no_llm") and noise.policy.tasks == ()  # noise: no LLM call


def test_eval_reads_the_history_the_gateway_serves_at_test_time(fusion_split, tmp_path):
    """`make eval`'s inputs for a test record are the gateway's for that user on the test-time tables
    (`make replay`'s state): the same liked items in the same order into the same builder."""
    from service.backbones.feature_source import FeatureSource, LikedItem
    from service.backbones.scorers import EmbeddingScorer
    from service.gateway.store import InteractionStore
    from training.data.serving_export import write_serving_tables
    from training.data.split import rows_as_of
    from training.evaluation.serving_policy import record_inputs

    split, ds = fusion_split, fusion_split.dataset
    rng = np.random.default_rng(4)
    scorer = EmbeddingScorer("lightgcn", rng.normal(size=(ds.n_users, 3)).astype(np.float32), rng.normal(size=(ds.n_items, 3)).astype(np.float32),
                             {u.user_id: i for i, u in enumerate(ds.users)}, {it.item_id: i for i, it in enumerate(ds.items)})
    source = FeatureSource({"lightgcn": scorer}, {it.item_id: float(i) for i, it in enumerate(ds.items)})
    store = InteractionStore.from_folder(write_serving_tables(ds, tmp_path / "t", rows_as_of(ds, "test"), state="test"))
    for u in split.evaluated_users()[:20]:
        rec = Record(user=int(u), stage="test", m=5, items=[int(i) for i in rng.choice(ds.n_items, 5, replace=False)], target=int(split.test_item[u]),
                     utilities={}, invalid={}, dropped={}, seconds=0.0)
        user_id = ds.users[u].user_id
        liked = [LikedItem(e.item_id, e.genres) for e in store.history(user_id) if e.rating >= store.liked_at_least]
        cands = [ds.items[i] for i in rec.items]
        served = source.inputs("lightgcn", user_id, liked, [c.item_id for c in cands], [c.genres for c in cands])
        offline = record_inputs(source, split, rec, "lightgcn")
        assert served.extra.keys() == offline.extra.keys()
        for name in served.extra:
            np.testing.assert_array_equal(served.extra[name], offline.extra[name])


def test_orders_without_other_backbones_leave_out_the_rank_mean():
    from training.evaluation.engine_runs import method_orders

    rec = record([10, 11, 12], target=12)
    rec.utilities = {"pointwise": [0.0, 1.0, 2.0]}
    orders = method_orders(rec)
    assert orders["backbone"] == [0, 1, 2] and orders["pointwise"] == [2, 1, 0]
    assert "rank_mean_no_llm" not in orders
    assert orders["pairwise"] == [0, 1, 2]  # a task that did not run keeps the backbone's order


class CountingEngine:
    """Answers every task with a fixed preference and remembers how many users it was asked about."""

    def __init__(self):
        self.asked = 0

    async def score(self, profile, candidates, seed=0):
        from service.ranking.engine import EngineResult, TaskOutcome

        self.asked += 1
        m = len(candidates)
        prefer_last = np.arange(m, dtype=float)  # reverses the backbone order
        return EngineResult({t: TaskOutcome(t, utility=prefer_last, prompts=m) for t in ("pointwise", "pairwise", "listwise")})


def test_users_whose_item_is_not_a_candidate_are_not_sent_to_the_llm_and_every_number_stays_the_same(fusion_split):
    import asyncio

    from service.ranking.prompts import PromptConfig
    from training.evaluation.engine_runs import _run_engine, method_orders

    split, m, rng = fusion_split, 5, np.random.default_rng(3)
    users = split.evaluated_users()[:60]
    targets = split.target("test")
    # half the users have their test item in the list (at a random place), half do not
    tops = {"test": {}}
    for i, u in enumerate(users):
        others = [int(x) for x in rng.permutation(split.n_items) if x != targets[u]][:m]
        if i % 2 == 0:
            others[rng.integers(m)] = int(targets[u])
        tops["test"][int(u)] = others
    scores = np.zeros((split.n_users, split.n_items))

    def run(every):
        engine = CountingEngine()
        recs = asyncio.run(_run_engine(engine, split, users, "test", m, tops, PromptConfig(), scores, 4, score_every_user=every))
        return engine.asked, recs

    asked_all, every = run(True)
    asked_hits, hits = run(False)
    assert asked_all == 60 and asked_hits == 30
    assert [r.scored for r in hits] == [i % 2 == 0 for i in range(60)]
    for a, b in zip(every, hits):
        for method, order in method_orders(a).items():
            assert target_rank(order, a) == target_rank(method_orders(b)[method], b)
