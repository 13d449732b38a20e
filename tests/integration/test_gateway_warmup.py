"""The gateway warms the LLM before it says it is ready: `/readyz` reports the LLM as `warming`
(503) until a few known users have been scored through it, then `ok`; a warm-up leaves nothing in
the caches; an LLM that never answers does not keep the gateway warming forever.
Against the fake OpenAI-compatible server (tests/fake_llm.py) and the real Redis."""

from __future__ import annotations

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
from tests.fake_llm import FakeLLM

REDIS_URL = "redis://127.0.0.1:6379/0"


def settings_for(artifacts, llm_url: str, **overrides) -> GatewaySettings:
    return GatewaySettings(_env_file=None, artifacts_dir=artifacts, cache_dir=CACHE, backbone="random", model_dir=artifacts / "model-completions",
                           events_log=artifacts / f"events-warmup-{uuid.uuid4().hex[:8]}.jsonl", llm_url=llm_url, llm_timeout_s=5,
                           redis_url=REDIS_URL, cache_prefix=f"recranker-warmup-{uuid.uuid4().hex[:8]}", log_level="WARNING", **overrides)


def keys_under(settings: GatewaySettings) -> list[bytes]:
    return list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{namespace(settings.cache_prefix, settings.dataset)}:*"))


def ready_states(client: TestClient, within_s: float) -> list[tuple[int, str]]:
    """(status, llm check) of /readyz, polled until it answers 200 or `within_s` pass."""
    seen, until = [], time.monotonic() + within_s
    while time.monotonic() < until:
        r = client.get("/readyz")
        seen.append((r.status_code, r.json()["checks"]["llm"]))
        if r.status_code == 200:
            break
        time.sleep(0.05)
    return seen


@pytest.fixture
def slow_llm():
    with FakeLLM() as server:
        server.reset("slow")
        server.delay_s = 0.3  # each request: long enough to see the gateway warming
        yield server


def test_the_gateway_is_not_ready_until_the_llm_has_scored_the_warm_up_users(gateway_artifacts, slow_llm):
    settings = settings_for(gateway_artifacts, slow_llm.url, llm_warmup_users=2)
    with TestClient(create_app(settings)) as client:
        states = ready_states(client, within_s=60)
        warm = client.app.state.llm_warm_up.result()
        keys_after_warm_up = keys_under(settings)
    assert states[0] == (503, "warming")
    assert states[-1] == (200, "ok")
    assert warm.users_answered == 2 and slow_llm.prompts > 0
    assert keys_after_warm_up == []  # no history and no task scores cached by the warm-up


def test_with_the_warm_up_off_the_gateway_is_ready_at_once(gateway_artifacts, slow_llm):
    settings = settings_for(gateway_artifacts, slow_llm.url, llm_warmup_users=0)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["llm"] == "ok"
    assert slow_llm.prompts == 0


@pytest.mark.timeout(60)  # a warm-up that never gives up fails here; when it gives up is pinned on virtual time (test_rerank_orchestration.py)
def test_an_llm_that_never_answers_is_reported_down_and_the_warm_up_gives_up(gateway_artifacts):
    settings = settings_for(gateway_artifacts, f"http://127.0.0.1:{free_port()}", llm_warmup_users=2, llm_warmup_timeout_s=1.0)
    with TestClient(create_app(settings)) as client:
        first = client.get("/readyz")
        warm_up = client.app.state.llm_warm_up
        while not warm_up.done():
            time.sleep(0.05)
        gave_up = warm_up.result()
        rerank = client.post("/rerank", json={"user_id": "1", "k": 3})
    assert first.status_code == 503 and first.json()["checks"]["llm"] == "down"
    assert gave_up.users_answered == 0 and gave_up.attempts >= 1
    assert rerank.status_code == 200 and rerank.json()["degraded"] is True  # served in the backbone order meanwhile
