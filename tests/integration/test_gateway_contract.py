"""The HTTP contract (finding 5 of the reliability review): the OpenAPI lists every status the
gateway answers with its error schema, /metrics is text, 405 names the allowed methods, an oversize
body is 413 however it is sent, and values outside the limits are refused (422), not capped."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port


def settings_for(artifacts, tmp_path, **overrides) -> GatewaySettings:
    return GatewaySettings(_env_file=None, artifacts_dir=artifacts, cache_dir=tmp_path, backbone="random", model_dir=artifacts / "model-chat",
                           llm_url=f"http://127.0.0.1:{free_port()}", llm_timeout_s=1, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                           log_level="WARNING", **overrides)


@pytest.fixture(scope="module")
def client(gateway_artifacts, tmp_path_factory):
    with TestClient(create_app(settings_for(gateway_artifacts, tmp_path_factory.mktemp("contract")))) as c:
        yield c


def test_the_openapi_lists_every_error_status_with_the_error_schema(client):
    spec = client.get("/openapi.json").json()
    for path, codes in (("/rerank", {"400", "401", "404", "413", "422", "503"}), ("/events", {"400", "401", "404", "413", "422", "503"})):
        responses = spec["paths"][path]["post"]["responses"]
        assert codes <= set(responses), path
        for code in codes:
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_a_wrong_method_is_405_naming_the_allowed_one(client):
    reply = client.get("/rerank")
    assert reply.status_code == 405 and reply.json()["error"]["code"] == "method_not_allowed"
    assert reply.headers["allow"] == "POST"


def test_an_oversize_body_is_413_with_or_without_a_content_length(client):
    big = b'{"events": [' + b" " * (5 * 1024 * 1024) + b"]}"

    def chunks():
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    assert client.post("/events", content=big, headers={"content-type": "application/json"}).status_code == 413
    chunked = client.post("/events", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("timestamp", [-10**11, -1, 10**30, 4_102_444_801])
def test_an_event_timestamp_outside_0_to_the_year_2100_is_refused(client, timestamp):
    reply = client.post("/events", json={"events": [{"user_id": "1", "item_id": "1", "rating": 4, "timestamp": timestamp}]})
    assert reply.status_code == 422 and reply.json()["error"]["details"][0]["field"].endswith("timestamp")


@pytest.mark.parametrize(("field", "code"), [("k", "k_too_large"), ("deadline_ms", "deadline_too_long")])
def test_a_limit_above_its_maximum_is_refused_not_capped(client, field, code):
    settings = client.app.state.settings
    too_much = {"k": settings.max_k + 1, "deadline_ms": settings.max_deadline_ms + 1}[field]
    reply = client.post("/rerank", json={"user_id": "1", field: too_much})
    assert reply.status_code == 422 and reply.json()["error"]["code"] == code


def test_with_api_keys_set_the_schema_and_the_docs_need_a_key_too(gateway_artifacts, tmp_path):
    with TestClient(create_app(settings_for(gateway_artifacts, tmp_path, api_keys=("s3cret",)))) as c:
        for path in ("/openapi.json", "/docs"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert "/rerank" in c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()["paths"]


def test_the_schema_states_the_limits_this_gateways_settings_enforce(gateway_artifacts, tmp_path):
    settings = settings_for(gateway_artifacts, tmp_path, max_k=7, max_candidates=12, max_deadline_ms=4321, max_body_bytes=2048)
    with TestClient(create_app(settings)) as c:
        spec = c.get("/openapi.json").json()
        props = spec["components"]["schemas"]["RerankRequest"]["properties"]
        bounded = {name: next(b for b in props[name]["anyOf"] if b.get("type") != "null") for name in ("k", "m", "deadline_ms", "candidates")}
        assert (bounded["k"]["maximum"], bounded["m"]["maximum"], bounded["deadline_ms"]["maximum"]) == (7, 12, 4321)
        assert (bounded["candidates"]["maxItems"], bounded["candidates"]["uniqueItems"], bounded["candidates"]["minItems"]) == (12, True, 1)
        assert "over 2048 bytes are refused with 413" in spec["paths"]["/events"]["post"]["description"]
        # and what the schema says is what is enforced
        assert c.post("/rerank", json={"user_id": "1", "k": 8}).status_code == 422
        assert c.post("/rerank", json={"user_id": "1", "deadline_ms": 4322}).status_code == 422


# -- the request checks the schema cannot express (the service's own, 422 with a code) -----------------


def test_rerank_rejects_an_empty_candidate_list_with_422_saying_to_omit_it(client):
    reply = client.post("/rerank", json={"user_id": "1", "candidates": []})
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "no_candidates"
    # the caller sent the empty list (not the backbone's doing): the message says what to send instead
    assert reply.json()["error"]["message"] == "candidates is empty; omit it to let the backbone retrieve them"


def test_rerank_rejects_duplicate_candidates_with_422(client):
    reply = client.post("/rerank", json={"user_id": "1", "candidates": ["50", "181", "50"]})
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "duplicate_candidates"


def test_rerank_rejects_m_above_the_candidate_limit_with_422_and_serves_m_at_the_limit(client):
    limit = client.app.state.settings.max_candidates
    over = client.post("/rerank", json={"user_id": "1", "m": limit + 1, "tasks": []})
    assert over.status_code == 422
    assert over.json()["error"]["code"] == "too_many_candidates" and over.json()["error"]["details"] == {"max_candidates": limit}
    at = client.post("/rerank", json={"user_id": "1", "m": limit, "k": limit, "tasks": []})
    assert at.status_code == 200 and len(at.json()["results"]) == limit
