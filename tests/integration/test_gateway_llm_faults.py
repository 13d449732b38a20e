"""The real gateway (its app factory) and the real Redis in front of a fake OpenAI-compatible LLM
(tests/fake_llm.py) that answers wrongly in every way seen: answers off the format, +Inf, NaN or
-Inf logprobs, the wrong number of choices, an HTML page, a closed connection, no answer at all.
Each is answered 200 with `degraded: true` and a reason, never a NaN or null relevance, and nothing
of it is cached: the repeat asks the LLM again. Healthy answers are served and cached as before.

Both ways the client talks to the LLM are covered: a task's prompts as one `/v1/completions`
request (the model folder has a chat template) and one `/v1/chat/completions` request per prompt.
"""

from __future__ import annotations

import json
import math
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.history import history_fingerprint, namespace
from service.gateway.settings import GatewaySettings
from tests.conftest import CACHE
from tests.fake_llm import FakeLLM

REDIS_URL = "redis://127.0.0.1:6379/0"
TASKS = ["listwise", "pairwise", "pointwise"]


@pytest.fixture(scope="module")
def fake_llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module", params=["completions", "chat"])
def gateway(request, gateway_artifacts, fake_llm):
    settings = GatewaySettings(
        _env_file=None, artifacts_dir=gateway_artifacts, cache_dir=CACHE, backbone="random", model_dir=gateway_artifacts / f"model-{request.param}",
        events_log=gateway_artifacts / f"events-{request.param}.jsonl",
        llm_url=fake_llm.url, llm_timeout_s=5, redis_url=REDIS_URL, cache_prefix=f"recranker-fault-{uuid.uuid4().hex[:8]}",
        default_deadline_ms=10_000, default_k=5, log_level="WARNING", llm_warmup_users=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings
    drop_keys(settings.cache_prefix)


@pytest.fixture
def llm(fake_llm, gateway):
    """The fake LLM, healthy, with no task scores cached by an earlier test."""
    _, settings = gateway
    fake_llm.reset()
    drop_keys(settings.cache_prefix)
    yield fake_llm
    fake_llm.reset()


def drop_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def score_keys(settings: GatewaySettings) -> list[bytes]:
    return list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{namespace(settings.cache_prefix, settings.dataset)}:scores:*"))


def metric_value(client: TestClient, name: str, **labels) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rerank(client: TestClient, **body) -> dict:
    resp = client.post("/rerank", json=body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    for r in answer["results"]:  # never a NaN or null relevance, whatever the LLM said
        assert isinstance(r["relevance_score"], float) and 0.0 <= r["relevance_score"] <= 1.0, r
        assert all(isinstance(v, float) and math.isfinite(v) for v in r["scores"].values()), r
    return answer


def test_a_healthy_llm_is_served_non_degraded_and_its_task_scores_are_cached(gateway, llm):
    client, settings = gateway
    first = rerank(client, user_id="50", m=8, k=8)
    asked = llm.prompts
    second = rerank(client, user_id="50", m=8, k=8)
    assert first["degraded"] is False and first["degraded_reasons"] == []
    assert first["tasks_used"] == TASKS and first["repaired_answers"] == {t: 0 for t in TASKS}
    assert len({r["relevance_score"] for r in first["results"]}) > 1  # a ranking, not all ties
    assert asked == 8 + 8 + 1  # pointwise 8, pairwise 4 pairs in both orders, listwise 1
    assert len(score_keys(settings)) == 3
    assert first["cache"]["result"] == "miss" and second["cache"]["result"] == "hit"
    assert llm.prompts == asked  # the repeat did not ask the LLM
    assert second["results"] == first["results"] and second["degraded"] is False


INVALID_ANSWERS = ["off_format", "plus_inf", "nan", "minus_inf"]
BROKEN_REPLIES = ["wrong_count", "html", "close"]


@pytest.mark.parametrize("mode", INVALID_ANSWERS + BROKEN_REPLIES)
def test_a_faulty_llm_gives_a_degraded_backbone_order_answer_that_is_never_cached(gateway, llm, mode):
    client, settings = gateway
    reason = "llm_invalid_answers" if mode in INVALID_ANSWERS else "llm_unavailable"
    degraded_before = metric_value(client, "recranker_degraded_total", reason=reason)
    llm.reset(mode)
    first = rerank(client, user_id="50", m=8, k=8)
    assert first["degraded"] is True and first["degraded_reasons"] == [reason]
    assert first["tasks_used"] == []
    assert [r["index"] for r in first["results"]] == list(range(8))  # the backbone's order
    if mode in INVALID_ANSWERS:  # every prompt of every task counted once
        assert first["repaired_answers"] == {"pointwise": 8, "pairwise": 8, "listwise": 1}
        assert metric_value(client, "recranker_llm_errors_total", kind="invalid") >= 3
    assert score_keys(settings) == []
    repeat = rerank(client, user_id="50", m=8, k=8)
    assert repeat["cache"]["result"] == "miss" and repeat["degraded_reasons"] == [reason]
    assert metric_value(client, "recranker_degraded_total", reason=reason) == degraded_before + 2


def test_off_format_pairwise_answers_are_reported_not_served_as_good(gateway, llm):
    """Issue 16's reproduction: pairwise alone, the default m = 10, so 5 pairs and 10 prompts."""
    client, settings = gateway
    llm.reset("off_format")
    body = rerank(client, user_id="50", k=4, tasks=["pairwise"])
    assert body["degraded"] is True and body["degraded_reasons"] == ["llm_invalid_answers"]
    assert body["repaired_answers"] == {"pairwise": 10}  # per prompt, not per pair (5)
    assert body["tasks_used"] == [] and all(r["scores"] == {} for r in body["results"])
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert score_keys(settings) == []
    assert rerank(client, user_id="50", k=4, tasks=["pairwise"])["cache"]["result"] == "miss"


@pytest.mark.parametrize(("every", "invalid", "dropped"), [(10, 1, False), (5, 2, False), (3, 3, True)], ids=["1_of_10", "2_of_10", "3_of_10"])
def test_a_task_is_dropped_only_above_the_allowed_share_of_invalid_answers_and_a_repaired_one_is_not_cached(gateway, llm, every, invalid, dropped):
    client, settings = gateway
    assert settings.max_invalid_answer_share == 0.2
    llm.reset("healthy", off_format_every=every)
    body = rerank(client, user_id="60", m=10, k=10, tasks=["pointwise"])
    assert body["repaired_answers"] == {"pointwise": invalid}
    assert body["degraded"] is dropped
    assert body["degraded_reasons"] == (["llm_invalid_answers"] if dropped else [])
    assert body["tasks_used"] == ([] if dropped else ["pointwise"])
    assert score_keys(settings) == []  # partly invalid: served or not, never cached
    assert rerank(client, user_id="60", m=10, k=10, tasks=["pointwise"])["cache"]["result"] == "miss"


@pytest.mark.timeout(60)  # a hang fails here; how long a deadline takes is the admission tests' (virtual time)
def test_an_llm_that_never_answers_is_dropped_at_the_deadline_and_not_cached(gateway, llm):
    client, settings = gateway
    llm.reset("hang")
    body = rerank(client, user_id="70", m=6, k=6, deadline_ms=500)
    assert body["degraded"] is True and body["degraded_reasons"] == ["llm_deadline"]
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert score_keys(settings) == []
    assert rerank(client, user_id="70", m=6, k=6, deadline_ms=500)["cache"]["result"] == "miss"


@pytest.mark.parametrize("entry", [{"repaired": 1}, {"utility": [math.nan, 1, 2, 3]}, {"utility": [1.0, 2.0]}], ids=["repaired", "nan", "wrong_length"])
def test_a_cached_entry_with_repaired_or_unusable_scores_is_not_served(gateway, llm, entry):
    """Entries an earlier release wrote (it cached partly repaired tasks) are asked again."""
    client, settings = gateway
    c = client.app.state.components
    candidates = ["1", "2", "3", "4"]
    key = c.service.scores.key(settings.llm_model, "80", history_fingerprint(c.store.history("80")), candidates, "pointwise")
    value = {"utility": [4.0, 3.0, 2.0, 1.0], "repaired": 0, **entry}
    redis.Redis.from_url(REDIS_URL).set(key, json.dumps(value).encode(), ex=60)
    body = rerank(client, user_id="80", candidates=candidates, tasks=["pointwise"])
    assert body["cache"]["result"] == "miss" and llm.prompts == 4  # the LLM was asked
    assert body["degraded"] is False and body["tasks_used"] == ["pointwise"]
