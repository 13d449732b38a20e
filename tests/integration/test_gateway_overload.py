"""Admission control through the real gateway (finding 4 of the reliability review): with more
uncached users at once than the LLM can score, the admitted ones are answered in full within their
deadline and the others without the LLM (degraded `overloaded`, backbone order, or 429 by the
setting), instead of every request waiting for the LLM and none getting an answer.

Here the requests really run side by side on a busy machine, so nothing below reads a clock: an
admitted request that missed its deadline would say so (`llm_deadline`). When each is answered, to
the exact second, is pinned on virtual time in tests/unit/test_rerank_orchestration.py and
tests/unit/test_admission.py."""

from __future__ import annotations

import math
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


def burst(client: TestClient, users: list[str]) -> list[httpx.Response]:
    """All users at once, each request from its own thread into the gateway's one event loop."""

    def one(user):
        return client.post("/rerank", json={"user_id": user, "m": 4, "tasks": ["pointwise"], "use_cache": False})

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        return list(pool.map(one, users))


@pytest.mark.timeout(120)  # requests that wait on one another forever fail here
def test_at_overload_the_capacity_is_answered_in_full_and_the_rest_without_the_llm(gateway_artifacts, slow_llm, tmp_path):
    with gateway(gateway_artifacts, slow_llm.url, tmp_path) as client:
        replies = burst(client, [str(u) for u in range(1, 9)])
    assert all(r.status_code == 200 for r in replies)
    bodies = [r.json() for r in replies]
    full = [b for b in bodies if not b["degraded"]]
    shed = [b for b in bodies if b["degraded"]]
    assert len(full) >= 2  # the slot and the one waiting place
    assert all(b["tasks_used"] == ["pointwise"] and b["results"][0]["scores"] for b in full)  # scored in time, in full
    assert shed and all(b["degraded_reasons"] == ["overloaded"] and b["tasks_used"] == [] for b in shed)  # none ran past its deadline
    assert all([r["index"] for r in b["results"]] == list(range(4)) for b in shed)  # the backbone order


@pytest.mark.timeout(120)
def test_with_reject_an_overloaded_request_is_a_429_with_retry_after(gateway_artifacts, slow_llm, tmp_path):
    with gateway(gateway_artifacts, slow_llm.url, tmp_path, overload_response="reject") as client:
        replies = burst(client, [str(u) for u in range(1, 9)])
    codes = [r.status_code for r in replies]
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    rejected = next(r for r in replies if r.status_code == 429)
    error = rejected.json()["error"]
    assert error["code"] == "overloaded" and error["details"]["retry_after_s"] > 0
    # the header is the admission's estimate in the body, rounded up to whole seconds
    assert rejected.headers["retry-after"] == str(max(1, math.ceil(error["details"]["retry_after_s"])))
