"""Admission control through the real gateway (finding 4 of the reliability review): with more
uncached users at once than the LLM can score, the admitted ones are answered in full within their
deadline and the others at once (degraded `overloaded`, backbone order, or 429 by the setting),
instead of every request waiting for the LLM and none getting an answer."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from tests.conftest import CACHE
from tests.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def slow_llm():
    with FakeLLM() as server:
        server.reset("slow")
        server.delay_s = 0.4
        yield server


def gateway(artifacts, llm_url: str, tmp_path, **overrides) -> TestClient:
    settings = GatewaySettings(
        _env_file=None, artifacts_dir=artifacts, cache_dir=CACHE, events_log=tmp_path / "events.jsonl", backbone="random",
        model_dir=artifacts / "model-completions", llm_url=llm_url, llm_timeout_s=5, redis_url="redis://127.0.0.1:6379/0",
        cache_prefix=f"recranker-overload-{uuid.uuid4().hex[:8]}", default_deadline_ms=2500, default_k=5, log_level="WARNING",
        llm_slots=1, llm_max_waiting=1, llm_warmup_users=0, **overrides,
    )
    return TestClient(create_app(settings))


def burst(client: TestClient, users: list[str]) -> list[tuple[httpx.Response, float]]:
    """All users at once, each request from its own thread into the gateway's one event loop."""

    def one(user):
        started = time.perf_counter()
        reply = client.post("/rerank", json={"user_id": user, "m": 4, "tasks": ["pointwise"], "use_cache": False})
        return reply, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        return list(pool.map(one, users))


def test_at_overload_the_capacity_is_answered_in_full_and_the_rest_at_once(gateway_artifacts, slow_llm, tmp_path):
    with gateway(gateway_artifacts, slow_llm.url, tmp_path) as client:
        replies = burst(client, [str(u) for u in range(1, 9)])
    bodies = [(r.json(), s) for r, s in replies]
    assert all(r.status_code == 200 for r, _ in replies)
    full = [s for b, s in bodies if not b["degraded"]]
    shed = [(b, s) for b, s in bodies if b["degraded"]]
    assert len(full) >= 2  # the slot and the one waiting place: both finish within the deadline
    assert all(s < 2.5 for s in full)
    assert shed and all(b["degraded_reasons"] == ["overloaded"] and b["tasks_used"] == [] for b, _ in shed)
    assert all([r["index"] for r in b["results"]] == list(range(4)) for b, _ in shed)  # the backbone order
    assert all(s < 2.0 for _, s in shed)  # answered once waiting could not help, not at the deadline


def test_with_reject_an_overloaded_request_is_a_429_with_retry_after(gateway_artifacts, slow_llm, tmp_path):
    with gateway(gateway_artifacts, slow_llm.url, tmp_path, overload_response="reject") as client:
        replies = burst(client, [str(u) for u in range(1, 9)])
    codes = [r.status_code for r, _ in replies]
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    rejected = next(r for r, _ in replies if r.status_code == 429)
    assert rejected.json()["error"]["code"] == "overloaded" and int(rejected.headers["retry-after"]) >= 1
