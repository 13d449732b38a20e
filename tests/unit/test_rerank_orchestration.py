"""The rerank use case driven with fakes, no Redis and no vLLM: the real RerankService and
RankingEngine, the in-process cache, a scripted LLM. Each test is one orchestration rule."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiotools import VirtualClock
from starlette.requests import Request

from service.backbones.feature_source import FeatureSource, LikedItem
from service.backbones.scorers import EmbeddingScorer
from service.gateway.admission import LLMAdmission
from service.gateway.cache import MemoryCache
from service.gateway.errors import rejected_handler, status_of
from service.gateway.history import HistoryCache, ScoreCache, history_fingerprint
from service.gateway.metrics import GatewayMetrics
from service.gateway.policy_runtime import PolicyRuntime
from service.gateway.rejections import AtCapacity, InvalidInput, Rejected, Unavailable, UnknownEntity
from service.gateway.reranker import FUSION_RESERVE_S, RerankService
from service.gateway.retrieval import EmbeddedRetriever
from service.gateway.schemas import RerankRequest
from service.gateway.settings import GatewaySettings
from service.gateway.store import InteractionStore
from service.gateway.warmup import warm_up
from service.ranking.engine import EngineConfig, RankingEngine
from service.ranking.fusion import LearnedFusion, feature_matrix, fuse
from service.ranking.policy import ServingPolicy
from tests.conftest import synthetic_dataset
from tests.fake_llm import healthy_logprobs
from training.data.serving_export import write_serving_tables

QUESTIONS = {"pointwise": "How would the user rate", "pairwise": "Would the user prefer", "listwise": "Rank"}


class ScriptedLLM:
    """Healthy answers, except for the tasks told to fail or to take longer than any deadline."""

    def __init__(self, failing: tuple[str, ...] = (), hanging: tuple[str, ...] = (), delay_s: float = 0.0):
        self.failing, self.hanging, self.delay_s = failing, hanging, delay_s
        self.asked: list[str] = []

    def _task(self, messages) -> str:
        text = messages[-1]["content"]
        return next((t for t, q in QUESTIONS.items() if q in text), "listwise")

    async def next_token_logprobs(self, messages):
        task = self._task(messages)
        self.asked.append(task)
        if task in self.failing:
            raise ConnectionError("the LLM server refused the connection")
        if task in self.hanging:
            await asyncio.sleep(60)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return healthy_logprobs(messages[-1]["content"])

    async def generate(self, messages, max_tokens: int = 16, **extra) -> str:
        return "A, B, C, D, E"


@pytest.fixture
def parts(tmp_path):
    dataset = synthetic_dataset(n_users=8, n_items=30, per_user=6)
    store = InteractionStore.from_folder(write_serving_tables(dataset, tmp_path / "serving"))
    rng = np.random.default_rng(0)
    retriever = EmbeddedRetriever("random", rng.normal(size=(dataset.n_users, 4)), rng.normal(size=(dataset.n_items, 4)),
                                  [u.user_id for u in dataset.users], [i.item_id for i in dataset.items])
    return store, retriever


def service_with(parts, llm, policy: PolicyRuntime | None = None, clock: VirtualClock | None = None, initial_seconds: float = 0.05,
                 **settings) -> RerankService:
    """The service on these parts; with `clock`, the request's deadline and the admission run on
    its virtual time (`on_virtual_time`)."""
    store, retriever = parts
    cfg = GatewaySettings(_env_file=None, dataset="synthetic", default_deadline_ms=2000, **settings)
    cache = MemoryCache()
    timing = {"clock": clock.virtual_time} if clock else {}
    return RerankService(settings=cfg, store=store, histories=HistoryCache(cache, store, "t", "synthetic", 60), scores=ScoreCache(cache, "t", "synthetic", 60),
                         retriever=retriever, engine=RankingEngine(llm, EngineConfig()), metrics=GatewayMetrics(), model_name="m",
                         policy=policy, admission=LLMAdmission(cfg.llm_slots, cfg.llm_max_waiting, initial_seconds=initial_seconds, **timing), **timing)


def on_virtual_time(clock: VirtualClock, make_coro):
    """Runs `make_coro()` with the event loop on `clock`: sleeps and timeouts return at once and
    advance it by exactly their length, so the times below are exact on any machine."""

    async def go():
        with clock.patch_loop():
            return await make_coro()

    return asyncio.run(go())


async def answered_at(service: RerankService, **body) -> tuple[object, float]:
    """(the answer, or the refusal raised, and the loop time it came at)."""
    try:
        out = await service.rerank(RerankRequest(**body), "rid")
    except Rejected as exc:
        out = exc
    return out, asyncio.get_running_loop().time()


class RecordingFusion(LearnedFusion):
    """A learned fusion that ranks the candidates in reverse and keeps the features it was given."""

    def __init__(self, feature_names):
        super().__init__(booster=None, feature_names=feature_names)
        self.seen: list = []

    def predict(self, features):
        self.seen.append(features)
        return features.column("backbone_rank").copy()  # the backbone's last first


def feature_source(parts) -> FeatureSource:
    """The retrieval backbone's vectors as the policy's one feature backbone ("lightgcn")."""
    _, r = parts
    return FeatureSource({"lightgcn": EmbeddingScorer("lightgcn", r._users, r._items, r._user_index, r._item_index)}, {"0": 5.0, "1": 1.0})


def policy_with(parts, method: str, **models: LearnedFusion) -> PolicyRuntime:
    policy = ServingPolicy(method=method, backbone="lightgcn", m=10, dataset="synthetic", data_fingerprint=None, feature_backbones=("lightgcn",),
                           fitted_models={name: f"{name}.lgb" for name in models})
    return PolicyRuntime(policy, feature_source(parts), dict(models))


def servable_names(parts) -> tuple[str, ...]:
    x = feature_source(parts).inputs("lightgcn", "1", [LikedItem("3", ("Drama",))], ["0"], [()])
    return feature_matrix(1, backbone_scores=x.backbone_scores, extra=x.extra).names


def rerank(service: RerankService, **body):
    defaults = {"user_id": "1", "k": 6} | ({} if "candidates" in body else {"m": 6})
    return asyncio.run(service.rerank(RerankRequest(**defaults | body), "rid"))


def test_all_tasks_answered_give_a_full_non_degraded_answer(parts):
    out = rerank(service_with(parts, ScriptedLLM()))
    assert not out.degraded and out.tasks_used == ["listwise", "pairwise", "pointwise"] and len(out.results) == 6


def test_a_task_past_the_deadline_is_dropped_and_the_rest_are_fused_in_time(parts):
    clock = VirtualClock()
    service = service_with(parts, ScriptedLLM(hanging=("pairwise",)), clock=clock)
    out, at = on_virtual_time(clock, lambda: answered_at(service, user_id="1", m=6, k=6, deadline_ms=500))
    assert out.degraded and out.degraded_reasons == ["llm_deadline"]
    assert out.tasks_used == ["listwise", "pointwise"]
    assert at == pytest.approx(0.5 - FUSION_RESERVE_S)  # the LLM's share of the deadline, the rest kept for fusion and the reply


def test_an_llm_error_drops_its_task_and_with_none_left_the_answer_is_the_backbone_order(parts):
    out = rerank(service_with(parts, ScriptedLLM(failing=("pointwise", "pairwise", "listwise"))))
    assert out.degraded and "llm_unavailable" in out.degraded_reasons and out.tasks_used == []
    assert [r.index for r in out.results] == list(range(6))


def test_a_partial_cache_hit_asks_the_llm_only_for_the_missing_task_and_serves_the_full_runs_ranking(parts):
    llm = ScriptedLLM()
    service = service_with(parts, llm)
    rerank(service, tasks=["pointwise", "listwise"])
    llm.asked.clear()
    out = rerank(service, tasks=["pointwise", "listwise", "pairwise"])
    assert set(llm.asked) == {"pairwise"}
    assert out.cache["result"] == "partial" and not out.degraded
    fresh = rerank(service_with(parts, ScriptedLLM()), tasks=["pointwise", "listwise", "pairwise"])
    assert fresh.cache["result"] == "miss"
    assert [(r.index, r.relevance_score) for r in out.results] == [(r.index, r.relevance_score) for r in fresh.results]


def test_the_answer_is_the_hybrid_of_the_task_scores_with_relevance_scaled_to_the_unit_interval(parts):
    out = rerank(service_with(parts, ScriptedLLM()))
    m = len(out.results)
    utilities = {t: np.array([0.0] * m) for t in out.tasks_used}
    for r in out.results:
        for t in out.tasks_used:
            utilities[t][r.index] = r.scores[t]
    fused = fuse(m, utilities)  # from the 6-decimal task scores of the answer: the same order
    assert out.fusion == "hybrid" and [r.index for r in out.results] == fused.order
    relevance = [r.relevance_score for r in out.results]
    assert relevance[0] == 1.0 and relevance[-1] == 0.0 and relevance == sorted(relevance, reverse=True)


def test_with_every_task_dropped_the_backbone_order_is_served_with_graded_relevance(parts):
    out = rerank(service_with(parts, ScriptedLLM(failing=("pointwise", "pairwise", "listwise"))), k=4)
    assert out.fusion == "backbone" and [r.index for r in out.results] == [0, 1, 2, 3]
    assert [r.relevance_score for r in out.results] == pytest.approx([1.0, 0.8, 0.6, 0.4])  # m = 6: (6 - i - 1) / 5


def test_learned_fusion_without_a_fitted_model_falls_back_to_the_hybrid_and_says_so(parts):
    out = rerank(service_with(parts, ScriptedLLM()), fusion="learned")
    assert out.fusion == "hybrid" and out.degraded_reasons == ["learned_fusion_unavailable"]
    out = rerank(service_with(parts, ScriptedLLM(), policy=policy_with(parts, "backbone")), fusion="learned_no_llm")
    assert out.fusion == "backbone" and out.degraded_reasons == ["learned_fusion_unavailable"]  # no task asked: the hybrid of none


def test_a_loaded_learned_fusion_ranks_the_answer_from_the_task_scores_and_the_non_llm_features(parts):
    model = RecordingFusion(servable_names(parts))
    out = rerank(service_with(parts, ScriptedLLM(), policy=policy_with(parts, "backbone", learned=model)), fusion="learned")
    assert out.fusion == "learned" and not out.degraded
    assert [r.index for r in out.results] == [5, 4, 3, 2, 1, 0]
    [features] = model.seen
    assert features.names == model.feature_names_
    for t in ("pointwise", "pairwise", "listwise"):  # the tasks' utilities, as answered
        assert [round(v, 6) for v in features.column(t)[[r.index for r in out.results]]] == [r.scores[t] for r in out.results]
    assert np.isfinite(features.column("log_popularity")).all()


def test_a_learned_fusion_whose_fit_fell_back_serves_its_fallback_without_degrading(parts):
    model = LearnedFusion(booster=None, feature_names=servable_names(parts), fallback="backbone")
    out = rerank(service_with(parts, ScriptedLLM(), policy=policy_with(parts, "backbone", learned=model)), fusion="learned")
    assert out.fusion == "learned" and not out.degraded
    assert [r.index for r in out.results] == list(range(6))


def test_at_overload_the_capacity_is_answered_in_full_within_the_deadline_and_the_rest_at_once(parts):
    # one slot and one waiting place; each scoring takes 0.4 s and the deadline is 2.5 s
    clock = VirtualClock()
    service = service_with(parts, ScriptedLLM(delay_s=0.4), clock=clock, llm_slots=1, llm_max_waiting=1)
    ask = {"m": 4, "k": 4, "tasks": ["listwise"], "use_cache": False, "deadline_ms": 2500}
    outs = on_virtual_time(clock, lambda: asyncio.gather(*(answered_at(service, user_id=str(u), **ask) for u in range(8))))
    full = [(round(t, 6), o) for o, t in outs if not o.degraded]
    shed = [(t, o) for o, t in outs if o.degraded]
    assert [t for t, _ in sorted(full, key=lambda x: x[0])] == [0.4, 0.8]  # the slot, then the waiter
    assert all(o.tasks_used == ["listwise"] for _, o in full)
    assert len(shed) == 6 and all(t == 0.0 for t, _ in shed)  # told at once, not at the deadline
    assert all(o.degraded_reasons == ["overloaded"] and [r.index for r in o.results] == [0, 1, 2, 3] for _, o in shed)


def test_with_reject_an_overloaded_request_gets_a_429_whose_retry_after_is_the_admissions_estimate_rounded_up(parts):
    # nothing has finished yet, so the estimate is the initial 1.5 s for the one in flight: Retry-After 2
    clock = VirtualClock()
    service = service_with(parts, ScriptedLLM(delay_s=0.4), clock=clock, initial_seconds=1.5, llm_slots=1, llm_max_waiting=0,
                           overload_response="reject")
    ask = {"m": 4, "k": 4, "tasks": ["listwise"], "use_cache": False, "deadline_ms": 2500}
    outs = on_virtual_time(clock, lambda: asyncio.gather(*(answered_at(service, user_id=u, **ask) for u in ("1", "2"))))
    [(refused, at)] = [(o, t) for o, t in outs if isinstance(o, Rejected)]
    assert at == 0.0 and refused.code == "overloaded" and refused.retry_after_s == 1.5
    reply = asyncio.run(rejected_handler(Request({"type": "http", "headers": [], "state": {"request_id": "rid"}}), refused))
    assert reply.status_code == 429 and reply.headers["retry-after"] == "2"
    assert json.loads(reply.body)["error"] == {"code": "overloaded", "message": "the LLM is at capacity; retry", "details": {"retry_after_s": 1.5}}


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.05, "1"), (1.0, "1"), (1.01, "2"), (2.4, "3")])
def test_retry_after_is_the_refusals_estimate_in_whole_seconds_rounded_up_and_never_zero(retry_after_s, header):
    refused = AtCapacity("overloaded", "busy", retry_after_s=retry_after_s)
    reply = asyncio.run(rejected_handler(Request({"type": "http", "headers": [], "state": {}}), refused))
    assert reply.headers["retry-after"] == header


class HangingRetriever:
    """A retrieval backbone that never answers."""

    def __init__(self):
        self.asked = 0

    async def top_m(self, user_id, m, exclude):
        self.asked += 1
        await asyncio.Event().wait()


def test_rerank_without_candidates_is_a_503_when_retrieval_does_not_answer_within_the_deadline(parts):
    clock = VirtualClock()
    service = service_with(parts, ScriptedLLM(), clock=clock)
    service.retriever = HangingRetriever()
    out, at = on_virtual_time(clock, lambda: answered_at(service, user_id="1", m=4, tasks=[], deadline_ms=300))
    assert isinstance(out, Unavailable) and out.code == "retrieval_unavailable" and status_of(out) == 503
    assert at == pytest.approx(0.3)  # given up at the request's deadline


def test_rerank_with_candidates_never_waits_for_retrieval(parts):
    service = service_with(parts, ScriptedLLM())
    service.retriever = hanging = HangingRetriever()
    out = rerank(service, candidates=["3", "1", "2"], tasks=[], k=3)
    assert [r.item_id for r in out.results] == ["3", "1", "2"] and hanging.asked == 0


def test_limits_are_domain_errors_with_a_code_and_the_edge_alone_picks_the_status(parts):
    with pytest.raises(InvalidInput) as err:
        rerank(service_with(parts, ScriptedLLM()), k=10_000)
    assert err.value.code == "k_too_large" and status_of(err.value) == 422
    with pytest.raises(UnknownEntity) as err:
        rerank(service_with(parts, ScriptedLLM()), user_id="nobody")
    assert err.value.code == "unknown_user" and status_of(err.value) == 404


def test_every_kind_of_refusal_has_exactly_one_status():
    kinds = Rejected.__subclasses__()
    assert kinds and all(status_of(kind("code", "message")) for kind in kinds)


def test_a_cached_score_is_keyed_by_the_history_so_an_event_retires_it(parts):
    llm = ScriptedLLM()
    service = service_with(parts, llm)
    store, _ = parts
    same_list = {"tasks": ["listwise"], "candidates": ["0", "1", "2", "3"]}
    rerank(service, **same_list)
    llm.asked.clear()
    rerank(service, **same_list)
    assert llm.asked == []  # the same history and list: served from the cache
    before = history_fingerprint(store.history("1"))
    store.append("1", "29", 5.0, 10**10)
    assert history_fingerprint(store.history("1")) != before
    rerank(service, **same_list)
    assert llm.asked == ["listwise"]  # asked again: the old score was not served for the new history


def test_the_default_request_serves_the_policys_method_and_a_non_llm_policy_calls_no_llm(parts):
    llm = ScriptedLLM()
    model = RecordingFusion(servable_names(parts))
    service = service_with(parts, llm, policy=policy_with(parts, "learned_no_llm", learned_no_llm=model))
    out = rerank(service)
    assert out.fusion == "learned_no_llm" and not out.degraded and out.tasks_used == []
    assert llm.asked == []  # the policy reads no LLM task, so none was asked
    assert [r.index for r in out.results] == [5, 4, 3, 2, 1, 0]  # the model's order, not the hybrid's
    [features] = model.seen
    assert np.isnan(features.column("pointwise")).all() and np.isfinite(features.column("lightgcn_score")).all()


def test_an_explicit_method_overrides_the_policy_and_tasks_alone_ask_for_the_hybrid(parts):
    llm = ScriptedLLM()
    service = service_with(parts, llm, policy=policy_with(parts, "backbone"))
    assert rerank(service).fusion == "backbone" and llm.asked == []
    out = rerank(service, fusion="hybrid")
    assert out.fusion == "hybrid" and sorted(set(llm.asked)) == ["listwise", "pairwise", "pointwise"]
    llm.asked.clear()
    out = rerank(service, tasks=["listwise"], use_cache=False)
    assert out.fusion == "hybrid" and set(llm.asked) == {"listwise"}
    assert rerank(service, fusion="rank_mean_no_llm").fusion == "rank_mean_no_llm"


def test_the_rank_mean_serves_the_feature_backbones_mean_rank(parts):
    service = service_with(parts, ScriptedLLM(), policy=policy_with(parts, "rank_mean_no_llm"))
    out = rerank(service, candidates=["0", "1", "2", "3"], k=4)
    scores = feature_source(parts).scorers["lightgcn"].scores("1", [], ["0", "1", "2", "3"])
    assert [r.item_id for r in out.results] == [str(i) for i in np.argsort(-np.asarray(scores), kind="stable")]


def test_the_features_read_the_live_history_so_an_event_moves_the_sequence_features(parts):
    """Liked items only, in time order, with an event appended counted at once."""
    store, _ = parts
    seen = []

    class Recording(FeatureSource):
        def inputs(self, list_backbone, user_id, liked, candidate_ids, candidate_genres):
            seen.append([e.item_id for e in liked])
            return super().inputs(list_backbone, user_id, liked, candidate_ids, candidate_genres)

    src = feature_source(parts)
    runtime = policy_with(parts, "rank_mean_no_llm")
    runtime = PolicyRuntime(runtime.policy, Recording(src.scorers, src.popularity), {})
    service = service_with(parts, ScriptedLLM(), policy=runtime)
    rerank(service)
    liked = [e.item_id for e in store.history("1") if e.rating >= store.liked_at_least]
    assert seen[-1] == liked
    store.append("1", "29", 5.0, 10**10)
    rerank(service)
    assert seen[-1] == [*liked, "29"]


# -- the LLM warm-up before /readyz says ok -------------------------------------------------------------


class RecoveringLLM(ScriptedLLM):
    """Refuses connections until the loop's clock reaches `up_at`, then answers healthily."""

    def __init__(self, up_at: float):
        super().__init__()
        self.up_at = up_at

    async def next_token_logprobs(self, messages):
        if asyncio.get_running_loop().time() < self.up_at:
            raise ConnectionError("the LLM server is not listening yet")
        return await super().next_token_logprobs(messages)


def test_the_warm_up_gives_up_on_an_llm_that_never_answers_when_its_time_is_up(parts):
    clock = VirtualClock()
    service = service_with(parts, ScriptedLLM(hanging=("pointwise", "pairwise", "listwise")), clock=clock)
    result, at = on_virtual_time(clock, lambda: timed(warm_up(service, users=2, deadline_s=5.0, give_up_s=1.0, clock=clock.virtual_time)))
    assert at == pytest.approx(1.0) and result.seconds == pytest.approx(1.0)
    assert (result.users_answered, result.attempts) == (0, 1)


def test_the_warm_up_retries_a_down_llm_every_retry_interval_until_it_answers(parts):
    # down until t = 3: tries at 0 and 2 fail, the third at 4 answers, then the second user at once
    clock = VirtualClock()
    service = service_with(parts, RecoveringLLM(up_at=3.0), clock=clock)
    result, at = on_virtual_time(clock, lambda: timed(warm_up(service, users=2, deadline_s=5.0, give_up_s=30.0, retry_s=2.0, clock=clock.virtual_time)))
    assert (result.users_answered, result.attempts) == (2, 4)
    assert at == pytest.approx(4.0)


async def timed(coro):
    result = await coro
    return result, asyncio.get_running_loop().time()
