"""Property-based runs over the gateway's API (hypothesis generates the bodies).

With its dependencies down: whatever body a client sends to any route, the answer is one of the
statuses the OpenAPI documents for it, in the error schema when it is an error, and never a 500
(schema-shaped bodies with wrong values, wrong types, unknown fields and plain junk).

Healthy (the real Redis under a key prefix of its own, a well-behaved fake LLM): every valid
rerank request is answered 200, not degraded, with a permutation of its candidates (a prefix of one
when k is smaller), and asked again it is served from the cache with the very answer the LLM gives
when asked afresh."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port
from service.ranking.policy import FEATURE_METHODS, LLM_METHODS, METHODS
from service.ranking.tasks import TASKS
from tests.conftest import CACHE
from tests.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def client(gateway_artifacts, tmp_path_factory):
    # the LLM and Redis are unreachable, so every request is answered quickly (degraded when valid)
    cfg = GatewaySettings(_env_file=None, artifacts_dir=gateway_artifacts, cache_dir=tmp_path_factory.mktemp("props"), backbone="random",
                          model_dir=gateway_artifacts / "model-chat", llm_url=f"http://127.0.0.1:{free_port()}", llm_timeout_s=0.5,
                          redis_url=f"redis://127.0.0.1:{free_port()}/0", log_level="ERROR")
    with TestClient(create_app(cfg)) as c:
        yield c


scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20), st.sampled_from(["1", "50", "943", "999999", "", "pointwise", "listwise", "learned"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
rerank_bodies = st.fixed_dictionaries({}, optional={
    "user_id": values, "candidates": values | st.lists(st.sampled_from(["1", "2", "3", "50", "nope"]), max_size=30),
    "m": values, "k": values, "tasks": values | st.lists(st.sampled_from(["pointwise", "pairwise", "listwise", "other"]), max_size=4),
    "fusion": values, "deadline_ms": st.integers(min_value=-5, max_value=10**6) | values, "use_cache": values, "extra": values,
})
event = st.fixed_dictionaries({"user_id": st.sampled_from(["1", "2", "nope"]) | values, "item_id": st.sampled_from(["1", "50", "nope"]) | values},
                              optional={"rating": values | st.floats(min_value=-10, max_value=10), "timestamp": values})
events_bodies = st.fixed_dictionaries({}, optional={"events": values | st.lists(event, max_size=5), "extra": values})
retrieve_bodies = st.fixed_dictionaries({}, optional={"user_id": values, "m": values, "exclude": values})
ROUTES = {"/rerank": rerank_bodies, "/events": events_bodies, "/v1/retrieve": retrieve_bodies}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_any_body_gets_a_documented_status_and_never_a_500(client, route):
    documented = {int(code) for code in client.get("/openapi.json").json()["paths"][route]["post"]["responses"]}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=ROUTES[route] | values)
    def check(body):
        reply = client.post(route, json=body)
        assert reply.status_code in documented, (reply.status_code, body, reply.text[:300])
        if reply.status_code >= 400:
            assert set(reply.json()) == {"error", "request_id"} and reply.json()["error"]["code"]

    check()


# -- the healthy path ------------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def healthy_llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def healthy(gateway_artifacts, healthy_llm, tmp_path_factory):
    # deadlines and timeouts far above what a busy 2-core machine needs: a late answer here would
    # be the machine's fault, not a behaviour under test (deadlines are tested on virtual time)
    cfg = GatewaySettings(_env_file=None, artifacts_dir=gateway_artifacts, cache_dir=CACHE, backbone="random",
                          model_dir=gateway_artifacts / "model-completions", events_log=tmp_path_factory.mktemp("healthy") / "events.jsonl",
                          llm_url=healthy_llm.url, llm_timeout_s=30, redis_url=REDIS_URL, redis_timeout_s=5.0,
                          cache_prefix=f"recranker-props-{uuid.uuid4().hex[:8]}", default_deadline_ms=30_000, llm_warmup_users=0, log_level="ERROR")
    with TestClient(create_app(cfg)) as c:
        yield c
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{cfg.cache_prefix}:*"):
        client.delete(key)


@st.composite
def valid_rerank_bodies(draw, users: list[str], items: list[str], max_candidates: int, max_k: int) -> dict:
    body = {"user_id": draw(st.sampled_from(users))}
    if draw(st.booleans()):
        body["candidates"] = draw(st.lists(st.sampled_from(items), min_size=1, max_size=max_candidates, unique=True))
    elif draw(st.booleans()):
        body["m"] = draw(st.integers(1, max_candidates))
    k = draw(st.none() | st.just(max_k) | st.integers(1, max_k))
    tasks = draw(st.none() | st.lists(st.sampled_from(TASKS), unique=True, max_size=3))
    fusion = draw(st.none() | st.sampled_from(METHODS))
    body |= {name: value for name, value in (("k", k), ("tasks", tasks), ("fusion", fusion)) if value is not None}
    return body


def expected_tasks(body: dict, default_tasks) -> list[str]:
    """The LLM tasks a request asks for when the gateway has no serving policy (as here)."""
    if body.get("tasks") is not None:
        return sorted(set(body["tasks"]))
    return sorted(default_tasks) if body.get("fusion", "hybrid") in LLM_METHODS else []


@pytest.mark.timeout(600)
def test_every_valid_request_to_a_healthy_gateway_gets_a_full_ranking_that_the_cache_repeats(healthy, healthy_llm):
    cfg, store = healthy.app.state.settings, healthy.app.state.components.store
    bodies = valid_rerank_bodies(sorted(store.users), sorted(store.items), cfg.max_candidates, cfg.max_k)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=bodies)
    def check(body):
        first = healthy.post("/rerank", json=body)
        assert first.status_code == 200, (body, first.text[:300])
        answer = first.json()
        tasks = expected_tasks(body, cfg.default_tasks)
        # nothing failed: not degraded; without a serving policy the feature methods say they fell back to the hybrid
        needs_policy = body.get("fusion") in FEATURE_METHODS
        assert answer["degraded"] is needs_policy and answer["degraded_reasons"] == (["learned_fusion_unavailable"] if needs_policy else [])
        assert answer["tasks_used"] == tasks and answer["repaired_answers"] == {t: 0 for t in tasks}
        assert answer["fusion"] == ("hybrid" if tasks and body.get("fusion") != "backbone" else "backbone")

        candidates = body.get("candidates")
        m = len(candidates) if candidates else body.get("m", cfg.default_m)
        results = answer["results"]
        indices = [r["index"] for r in results]
        assert len(results) == min(body.get("k", cfg.default_k), m)
        assert len(set(indices)) == len(indices) and set(indices) <= set(range(m))  # a prefix of a permutation of the candidates...
        if len(results) == m:
            assert sorted(indices) == list(range(m))  # ...and all of it when k reaches m
        assert all(r["backbone_rank"] == r["index"] + 1 for r in results)
        if candidates:
            assert [r["item_id"] for r in results] == [candidates[i] for i in indices]
        else:  # retrieved: distinct items the user has not rated
            rated = {e.item_id for e in store.history(body["user_id"])}
            assert len({r["item_id"] for r in results}) == len(results) and not rated & {r["item_id"] for r in results}
        relevance = [r["relevance_score"] for r in results]
        assert relevance == sorted(relevance, reverse=True) and all(0.0 <= v <= 1.0 for v in relevance)
        assert all(set(r["scores"]) == set(tasks) for r in results)

        asked = healthy_llm.prompts
        again = healthy.post("/rerank", json=body).json()
        assert healthy_llm.prompts == asked  # served from the cache: the LLM was not asked
        if tasks:
            assert again["cache"]["result"] == "hit"
        fresh = healthy.post("/rerank", json={**body, "use_cache": False}).json()
        assert again["results"] == answer["results"] == fresh["results"]  # the cache repeats what the LLM says afresh

    asked_before = healthy_llm.prompts
    check()
    assert healthy_llm.prompts > asked_before  # the run went through the LLM, not only around it
