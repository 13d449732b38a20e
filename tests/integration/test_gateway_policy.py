"""The gateway serves the serving policy the tiny tuning run fitted: the default request gets the
policy's method, and the LLM is called (and needed for readiness) only when that method reads it."""

from __future__ import annotations

import dataclasses
import shutil
import uuid

from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port
from service.ranking.policy import ServingPolicy
from tests.conftest import CACHE

USER = "196"


def policy_as(tiny_export, tmp_path, method: str):
    """The tiny run's policy folder (its fitted rankers, its popularity table) serving `method`."""
    folder = tmp_path / f"policy-{method}"
    shutil.copytree(tiny_export / "policy" / "pop", folder)
    dataclasses.replace(ServingPolicy.load(folder), method=method).save(folder)
    return folder


def settings_for(tiny_artifacts, policy_dir, **overrides) -> GatewaySettings:
    return GatewaySettings(_env_file=None, artifacts_dir=tiny_artifacts, cache_dir=CACHE, backbone="pop", policy_dir=policy_dir,
                           llm_url=f"http://127.0.0.1:{free_port()}", llm_timeout_s=2, llm_warmup_users=0,
                           redis_url="redis://127.0.0.1:6379/0", cache_prefix=f"recranker-test-{uuid.uuid4().hex[:8]}", **overrides)


def test_the_tuning_run_fits_a_policy_on_its_validation_users_and_says_why(tiny_export):
    policy = ServingPolicy.load(tiny_export / "policy" / "pop")
    assert policy.backbone == "pop" and policy.m == 10 and policy.dataset == "ml-100k" and policy.data_fingerprint
    assert {"backbone", "rank_mean_no_llm", "hybrid"} <= set(policy.validation)
    assert all(row["users"] == 16 for row in policy.validation.values())  # the tiny profile's serving-validation users
    assert policy.method in policy.validation and policy.reasons


def test_a_non_llm_policy_is_served_by_default_without_the_llm_and_is_ready_without_it(tiny_export, tiny_artifacts, tmp_path):
    settings = settings_for(tiny_artifacts, policy_as(tiny_export, tmp_path, "learned_no_llm"))
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        body = client.post("/rerank", json={"user_id": USER, "m": 8, "k": 8}).json()
        hybrid = client.post("/rerank", json={"user_id": USER, "m": 8, "k": 8, "fusion": "hybrid"}).json()
        metrics = client.get("/metrics").text
    assert ready.status_code == 200
    assert ready.json()["method"] == "learned_no_llm" and ready.json()["needs"] == ["cache"] and ready.json()["checks"]["llm"] == "down"
    assert body["fusion"] == "learned_no_llm" and body["degraded"] is False and body["tasks_used"] == []
    assert "features" in body["timings_ms"] and not any(k.startswith("llm_") for k in body["timings_ms"])
    assert sorted(r["index"] for r in body["results"]) == list(range(8))
    # asked for explicitly, the hybrid still calls the LLM, and says that it is down
    assert hybrid["degraded_reasons"] == ["llm_unavailable"] and hybrid["fusion"] == "backbone"
    assert 'recranker_serving_policy{backbone="pop",dataset="ml-100k",method="learned_no_llm",source="policy"} 1.0' in metrics


def test_an_llm_policy_needs_the_llm_to_be_ready(tiny_export, tiny_artifacts, tmp_path):
    settings = settings_for(tiny_artifacts, policy_as(tiny_export, tmp_path, "hybrid"))
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        body = client.post("/rerank", json={"user_id": USER, "m": 8, "k": 8}).json()
    assert ready.status_code == 503 and ready.json()["needs"] == ["cache", "llm"] and ready.json()["method"] == "hybrid"
    assert body["degraded_reasons"] == ["llm_unavailable"]
