"""POST /rerank end to end: the real Redis on 127.0.0.1:6379, a real vLLM CPU server on the tiny
tuned model, the exported backbone scored in process. Also what the gateway does when Redis or the
LLM fails (degrade, answer 200) and how it answers bad input (4xx with a machine-readable code)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.history import namespace
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port
from tests.conftest import CACHE

USER = "1"
OTHER_USER = "2"


def settings_for(tiny_artifacts, llm_url: str, **overrides) -> GatewaySettings:
    values = dict(
        artifacts_dir=tiny_artifacts,
        cache_dir=CACHE,
        backbone="pop",
        llm_url=llm_url,
        llm_timeout_s=120,
        redis_url="redis://127.0.0.1:6379/0",
        cache_prefix=f"recranker-test-{uuid.uuid4().hex[:8]}",
        default_deadline_ms=120_000,  # a CPU vLLM under test load is slow; deadlines are tested on their own
        default_k=5,
        llm_warmup_users=0,  # the warm-up has its own test; here every LLM call is a request's
        # These tests drive the LLM path through the default request: without a serving policy the
        # default is the hybrid of the three tasks (test_gateway_policy.py serves the tiny run's policy).
        policy_dir=tiny_artifacts / "no-policy",
    )
    values.update(overrides)
    return GatewaySettings(_env_file=None, **values)


def drop_keys(prefix: str, url: str = "redis://127.0.0.1:6379/0") -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture(scope="module")
def live(tiny_export, tiny_artifacts, vllm_tiny):
    settings = settings_for(tiny_artifacts, vllm_tiny.base_url)
    with TestClient(create_app(settings)) as client:
        yield client, settings
    drop_keys(settings.cache_prefix)


def metric_value(client: TestClient, name: str, **labels) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_rerank_round_trip_ranks_the_backbone_candidates_with_all_three_tasks(live):
    client, settings = live
    resp = client.post("/rerank", json={"user_id": USER, "k": 5, "m": 10}, headers={"X-Request-ID": "round-trip-1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-request-id"] == "round-trip-1" and body["request_id"] == "round-trip-1"
    assert body["degraded"] is False and body["degraded_reasons"] == []
    assert body["tasks_used"] == ["listwise", "pairwise", "pointwise"]
    assert body["model"] == json.loads((settings.resolved_model_dir / "manifest.json").read_text())["run_key"]  # the tuned model's run key
    results = body["results"]
    assert len(results) == 5
    assert len({r["index"] for r in results}) == 5 and all(0 <= r["index"] < 10 for r in results)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and 0.0 <= min(scores) and max(scores) == 1.0
    assert all(set(r["scores"]) == {"pointwise", "pairwise", "listwise"} for r in results)
    assert {"history", "retrieval", "llm_pointwise", "llm_pairwise", "llm_listwise", "fusion", "total"} <= set(body["timings_ms"])


def test_the_second_identical_call_is_served_from_the_cache(live):
    client, settings = live
    first = client.post("/rerank", json={"user_id": OTHER_USER, "m": 6}).json()
    hits_before = metric_value(client, "recranker_cache_requests_total", cache="result", result="hit")
    second = client.post("/rerank", json={"user_id": OTHER_USER, "m": 6}).json()
    assert first["cache"]["result"] == "miss"
    assert second["cache"] == {"history": "hit", "result": "hit"}
    assert not any(k.startswith("llm_") for k in second["timings_ms"])  # no LLM call at all
    assert [r["item_id"] for r in second["results"]] == [r["item_id"] for r in first["results"]]
    assert metric_value(client, "recranker_cache_requests_total", cache="result", result="hit") == hits_before + 3
    assert redis.Redis.from_url(settings.redis_url).exists(f"{namespace(settings.cache_prefix, settings.dataset)}:history:{OTHER_USER}")


def test_an_event_invalidates_the_cached_history_and_scores(live):
    client, settings = live
    user = "3"
    before = client.post("/rerank", json={"user_id": user, "m": 5, "tasks": ["pointwise"]}).json()
    assert client.post("/rerank", json={"user_id": user, "m": 5, "tasks": ["pointwise"]}).json()["cache"]["history"] == "hit"
    watched = before["results"][0]["item_id"]  # the user now rates the top candidate
    resp = client.post("/events", json={"events": [{"user_id": user, "item_id": watched, "rating": 5}]})
    assert resp.status_code == 200 and resp.json()["invalidated_users"] == [user]
    assert not redis.Redis.from_url(settings.redis_url).exists(f"{namespace(settings.cache_prefix, settings.dataset)}:history:{user}")
    after = client.post("/rerank", json={"user_id": user, "m": 5, "tasks": ["pointwise"]}).json()
    assert after["cache"] == {"history": "miss", "result": "miss"}
    assert watched not in [r["item_id"] for r in after["results"]]  # rated items are not recommended again


def test_bad_input_gets_a_4xx_with_a_machine_readable_code(live):
    client, settings = live
    malformed = client.post("/rerank", content=b'{"user_id": "1", ', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed_json"
    unknown = client.post("/rerank", json={"user_id": "no-such-user"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_user"
    too_many = client.post("/rerank", json={"user_id": USER, "candidates": [str(i) for i in range(1, settings.max_candidates + 2)]})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_candidates"
    unknown_items = client.post("/rerank", json={"user_id": USER, "candidates": ["1", "no-such-item"]})
    assert unknown_items.status_code == 422 and unknown_items.json()["error"]["details"]["item_ids"] == ["no-such-item"]
    schema = client.post("/rerank", json={"user_id": USER, "tasks": ["telepathy"]})
    assert schema.status_code == 422 and schema.json()["error"]["code"] == "invalid_request"
    assert schema.json()["error"]["details"][0]["field"].startswith("tasks")
    huge = client.post("/rerank", content=b'{"user_id": "' + b"x" * (settings.max_body_bytes + 1) + b'"}', headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    bad_rating = client.post("/events", json={"events": [{"user_id": USER, "item_id": "1", "rating": 11}]})
    assert bad_rating.status_code == 422 and bad_rating.json()["error"]["code"] == "invalid_rating"
    assert metric_value(client, "recranker_request_duration_seconds_count", route="/rerank", outcome="client_error") >= 5


def test_caller_supplied_candidates_are_reranked_in_their_own_index_space(live):
    client, _ = live
    candidates = ["50", "181", "100", "258", "294"]
    body = client.post("/rerank", json={"user_id": "7", "candidates": candidates, "k": 5}).json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2, 3, 4]
    assert all(candidates[r["index"]] == r["item_id"] for r in body["results"])


def test_api_keys_are_enforced_when_configured(tiny_export, tiny_artifacts, vllm_tiny):
    settings = settings_for(tiny_artifacts, vllm_tiny.base_url, api_keys=("s3cret",))
    with TestClient(create_app(settings)) as client:
        missing = client.post("/rerank", json={"user_id": USER, "tasks": []})
        wrong = client.post("/rerank", json={"user_id": USER, "tasks": []}, headers={"Authorization": "Bearer nope"})
        right = client.post("/rerank", json={"user_id": USER, "tasks": []}, headers={"Authorization": "Bearer s3cret"})
        assert client.get("/healthz").status_code == 200  # probes need no key
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    drop_keys(settings.cache_prefix)


def test_an_unreachable_llm_gives_the_backbone_order_degraded_not_an_error(tiny_export, tiny_artifacts):
    settings = settings_for(tiny_artifacts, f"http://127.0.0.1:{free_port()}", llm_timeout_s=2)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/rerank", json={"user_id": USER, "m": 8, "k": 8})
        ready = client.get("/readyz")
        dropped = metric_value(client, "recranker_llm_errors_total", kind="error")
        degraded = metric_value(client, "recranker_degraded_total", reason="llm_unavailable")
    assert resp.status_code == 200
    body = resp.json()
    assert body["degraded"] is True and body["degraded_reasons"] == ["llm_unavailable"]
    assert [r["index"] for r in body["results"]] == list(range(8))  # the backbone's order
    assert body["tasks_used"] == []
    assert ready.status_code == 503 and ready.json()["checks"] == {"cache": "ok", "llm": "down"}
    assert dropped == 3 and degraded == 1
    drop_keys(settings.cache_prefix)


@pytest.mark.timeout(120)  # a hang fails here, not a slow machine
def test_an_llm_slower_than_the_deadline_is_dropped_and_the_answer_comes_in_time(live):
    client, _ = live
    resp = client.post("/rerank", json={"user_id": "11", "m": 10, "deadline_ms": 50, "use_cache": False})
    body = resp.json()
    assert resp.status_code == 200
    assert body["degraded"] is True and "llm_deadline" in body["degraded_reasons"]
    assert [r["index"] for r in body["results"]] == list(range(5))


@pytest.fixture
def own_redis(tmp_path):
    """A Redis this test may stop, on its own port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=10)


def test_redis_stopped_mid_test_falls_back_to_the_backing_store(tiny_export, tiny_artifacts, vllm_tiny, own_redis):
    port, redis_process = own_redis
    settings = settings_for(tiny_artifacts, vllm_tiny.base_url, redis_url=f"redis://127.0.0.1:{port}/0")
    with TestClient(create_app(settings)) as client:
        healthy = client.post("/rerank", json={"user_id": "5", "m": 4, "tasks": ["pointwise"]}).json()
        redis_process.terminate()
        redis_process.wait(timeout=10)
        resp = client.post("/rerank", json={"user_id": "5", "m": 4, "tasks": ["pointwise"]})
        event = client.post("/events", json={"events": [{"user_id": "5", "item_id": "1", "rating": 4}]})
        errors = metric_value(client, "recranker_cache_requests_total", cache="history", result="error")
        ready = client.get("/readyz")
    assert healthy["degraded"] is False and healthy["cache"]["history"] == "miss"
    assert resp.status_code == 200
    body = resp.json()
    assert body["degraded"] is True and "cache_unavailable" in body["degraded_reasons"]
    assert body["cache"]["history"] == "error"
    assert body["tasks_used"] == ["pointwise"]  # the LLM still ranked, from the store's history
    assert {r["item_id"] for r in body["results"]} == {r["item_id"] for r in healthy["results"]}
    assert event.status_code == 200 and event.json()["cache_invalidation_failed"] == ["5"]
    assert errors >= 1
    assert ready.status_code == 503 and ready.json()["checks"]["cache"] == "down"


@pytest.fixture(scope="module")
def retrieval_service(tiny_export, tiny_artifacts):
    """A second gateway, in a uvicorn thread, whose POST /v1/retrieve is the remote backbone."""
    import threading

    import uvicorn

    settings = settings_for(tiny_artifacts, f"http://127.0.0.1:{free_port()}", log_level="WARNING")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.1)
    assert server.started, "the retrieval gateway did not start"
    yield f"http://127.0.0.1:{port}/v1/retrieve"
    server.should_exit = True
    thread.join(timeout=10)


def test_remote_retrieval_gives_the_same_candidates_as_the_embedded_backbone(tiny_artifacts, vllm_tiny, retrieval_service, live):
    embedded_client, _ = live
    settings = settings_for(tiny_artifacts, vllm_tiny.base_url, retrieval="remote", retrieval_url=retrieval_service)
    with TestClient(create_app(settings)) as client:
        remote = client.post("/rerank", json={"user_id": "9", "m": 7, "k": 7, "tasks": []}).json()
    embedded = embedded_client.post("/rerank", json={"user_id": "9", "m": 7, "k": 7, "tasks": []}).json()
    assert [r["item_id"] for r in remote["results"]] == [r["item_id"] for r in embedded["results"]]
    drop_keys(settings.cache_prefix)


def test_a_dead_remote_backbone_is_a_503_without_candidates_and_no_problem_with_them(tiny_artifacts, vllm_tiny):
    settings = settings_for(tiny_artifacts, vllm_tiny.base_url, retrieval="remote", retrieval_url=f"http://127.0.0.1:{free_port()}/v1/retrieve")
    with TestClient(create_app(settings)) as client:
        without = client.post("/rerank", json={"user_id": USER, "tasks": []})
        given = client.post("/rerank", json={"user_id": USER, "tasks": [], "candidates": ["1", "2", "3"]})
    assert without.status_code == 503 and without.json()["error"]["code"] == "retrieval_unavailable"
    assert given.status_code == 200 and [r["item_id"] for r in given.json()["results"]] == ["1", "2", "3"]
    drop_keys(settings.cache_prefix)


def test_an_event_posted_to_one_replica_reaches_the_others_through_the_redis_stream(tiny_export, tiny_artifacts):
    prefix = f"recranker-test-{uuid.uuid4().hex[:8]}"
    dead_llm = f"http://127.0.0.1:{free_port()}"
    replica = lambda: create_app(settings_for(tiny_artifacts, dead_llm, cache_prefix=prefix))  # noqa: E731
    ask = {"user_id": "4", "m": 5, "tasks": []}
    with TestClient(replica()) as a, TestClient(replica()) as b:
        watched = b.post("/rerank", json=ask).json()["results"][0]["item_id"]  # b caches the history
        posted = a.post("/events", json={"events": [{"user_id": "4", "item_id": watched, "rating": 5}]}).json()
        seen_by_b = False
        for _ in range(100):
            if watched not in [r["item_id"] for r in b.post("/rerank", json=ask).json()["results"]]:
                seen_by_b = True
                break
            time.sleep(0.05)
    with TestClient(replica()) as late:  # started after the event: reads the stream at start
        late_items = [r["item_id"] for r in late.post("/rerank", json=ask).json()["results"]]
    assert posted["shared_with_replicas"] is True
    assert seen_by_b, "replica b still recommends the item the user rated on replica a"
    assert watched not in late_items
    drop_keys(prefix)
