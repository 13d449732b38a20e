"""A property-based run over the gateway's API: whatever body a client sends to any route, the
answer is one of the statuses the OpenAPI documents for it, in the error schema when it is an
error, and never a 500 (hypothesis generates the bodies: schema-shaped ones with wrong values,
wrong types, unknown fields and plain junk)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port


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
