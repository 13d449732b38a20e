"""The observability stack against real processes: a gateway started as the images start it
(`python -m service.gateway`, vLLM unreachable so it answers in degraded mode), a real Prometheus
(Debian's `prometheus`) scraping it with deploy/prometheus/prometheus.yml's gateway job, and the
real vLLM CPU server of the session. Every metric the dashboards read must be exposed, and every
dashboard expression must be accepted by Prometheus' PromQL engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import yaml

from service.llm.vllm_server import free_port
from service.procutil import stop_process_group
from tests.conftest import CACHE
from tests.deploy.metricnames import (
    INSTALL_HINT,
    REPO,
    TARGET_LABELS,
    dashboard_expressions,
    dashboard_metric_names,
    exposed_names,
    promql_label_names,
    promql_metric_names,
    sample_labels,
)
from training.backbones.training import train_backbone
from training.data.serving_export import write_serving_tables
from training.paths import Paths

PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
USER = "1"  # an ML-100K user


def wait_until(check, timeout_s: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}\n{log.read_text()[-3000:] if log else ''}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout_s:.0f}s\n{log.read_text()[-3000:] if log else ''}")


@pytest.fixture(scope="module")
def pop_artifacts(ml100k, ml100k_split, tmp_path_factory) -> Path:
    """An artefacts tree with only the popularity backbone (seconds to train): all the gateway
    needs to start; without a model folder it uses the default prompt settings."""
    artifacts = tmp_path_factory.mktemp("deploy-artifacts")
    paths = Paths(cache=CACHE, artifacts=artifacts)
    train_backbone("pop", ml100k, ml100k_split, paths)
    write_serving_tables(ml100k, paths.serving_dir(ml100k.name))
    return artifacts


@pytest.fixture(scope="module")
def gateway(pop_artifacts, tmp_path_factory):
    """The gateway on a free port, its LLM port closed (degraded mode), Redis the local one."""
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECRANKER_")}
    env.update({
        "RECRANKER_HOST": "127.0.0.1",
        "RECRANKER_PORT": str(port),
        "RECRANKER_ARTIFACTS_DIR": str(pop_artifacts),
        "RECRANKER_CACHE_DIR": str(CACHE),
        "RECRANKER_BACKBONE": "pop",
        "RECRANKER_LLM_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: degraded mode
        "RECRANKER_LLM_TIMEOUT_S": "1",
        "RECRANKER_CACHE_PREFIX": f"recranker-deploy-test-{port}",  # the shared local Redis; short TTLs
        "RECRANKER_HISTORY_TTL_S": "120",
        "RECRANKER_RESULT_TTL_S": "120",
    })
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "service.gateway"], cwd=tmp_path_factory.mktemp("cwd"), env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 120, "gateway /healthz", process, log)
        yield base
    finally:
        stop_process_group(process, grace_s=15)


@pytest.fixture(scope="module")
def traffic(gateway):
    """Requests that touch every route and fill the labelled metrics (rerank, cache, degradation, events)."""
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for _ in range(2):  # the second one hits the history cache
            response = client.post("/rerank", json={"user_id": USER, "k": 5})
            assert response.status_code == 200, response.text
            assert response.json()["degraded"], "the LLM is unreachable, so the answer must be degraded"
        assert client.post("/rerank", json={"user_id": "no-such-user"}).status_code == 404
        events = client.post("/events", json={"events": [{"user_id": USER, "item_id": "50", "rating": 5}]})
        assert events.status_code == 200, events.text
        assert client.get("/readyz").status_code == 503
        return client.get("/metrics").text


def test_gateway_exposes_every_metric_its_dashboard_reads(traffic):
    exposed = exposed_names(traffic)
    used = {n for n in dashboard_metric_names() if not n.startswith("vllm:")}
    assert used - exposed == set(), f"the running gateway does not expose: {sorted(used - exposed)}"
    assert re.search(r'^recranker_request_duration_seconds_count\{outcome="degraded",route="/rerank"\} [1-9]', traffic, re.M), \
        "degraded reranks are counted by route and outcome"
    assert re.search(r'^recranker_degraded_total\{reason="[^"]+"\} [1-9]', traffic, re.M)


def assert_labels_exist(exposition: str, vllm_side: bool) -> None:
    """Every label a dashboard expression filters or groups by is on the samples it reads. (A
    labelled metric nothing has touched yet has no samples: tests/deploy checks its declared labels.)"""
    labels = sample_labels(exposition)
    for name, title, expr in dashboard_expressions():
        metrics = promql_metric_names(expr)
        if any(m.startswith("vllm:") for m in metrics) != vllm_side or not any(m in labels for m in metrics):
            continue
        carried = set().union(*(labels.get(m, set()) for m in metrics)) | TARGET_LABELS
        missing = promql_label_names(expr) - carried
        assert not missing, f"{name} / {title}: no sample of {sorted(metrics)} has the label(s) {sorted(missing)}: {expr}"


def test_gateway_metrics_carry_the_labels_the_dashboard_uses(traffic):
    assert_labels_exist(traffic, vllm_side=False)


def test_vllm_server_exposes_every_metric_and_label_its_dashboard_reads(vllm_tiny):
    with httpx.Client(base_url=vllm_tiny.base_url, timeout=60) as client:
        # One finished request, so the per-request series have samples with their labels.
        done = client.post("/v1/completions", json={"model": vllm_tiny.served_name, "prompt": "Rate 1-5:", "max_tokens": 1})
        assert done.status_code == 200, done.text
        exposition = client.get("/metrics").text
    exposed = exposed_names(exposition)
    used = {n for n in dashboard_metric_names() if n.startswith("vllm:")}
    assert used - exposed == set(), f"the running vLLM server does not expose: {sorted(used - exposed)}"
    assert_labels_exist(exposition, vllm_side=True)


@pytest.fixture(scope="module")
def prometheus(gateway, traffic, tmp_path_factory):
    """A real Prometheus with the stack's gateway job, pointed at the test's gateway, scraping every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(f"`prometheus` is not installed: {INSTALL_HINT}", pytrace=False)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "recranker-gateway")
    job["static_configs"] = [{"targets": [gateway.removeprefix("http://")]}]
    config["scrape_configs"] = [job]
    config["global"]["scrape_interval"] = "1s"
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200, 60, "prometheus /-/ready", process, log)
        yield base
    finally:
        stop_process_group(process, grace_s=15)


def query(prometheus: str, expr: str) -> dict:
    response = httpx.get(f"{prometheus}/api/v1/query?{urlencode({'query': expr})}", timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {json.dumps(body)}"
    return body["data"]


def test_prometheus_scrapes_the_gateway_and_finds_its_metrics(prometheus):
    up = wait_until(lambda: query(prometheus, 'up{job="recranker-gateway"}')["result"], 60, "a scrape of the gateway")
    assert up[0]["value"][1] == "1", "Prometheus reached the gateway's /metrics"
    series = wait_until(lambda: query(prometheus, '{__name__=~"recranker_.+", job="recranker-gateway"}')["result"], 30, "recranker_* series")
    names = {s["metric"]["__name__"] for s in series}
    assert {"recranker_request_duration_seconds_bucket", "recranker_degraded_total", "recranker_inflight_requests",
            "recranker_cache_requests_total", "recranker_stage_duration_seconds_count"} <= names, sorted(names)
    rerank = query(prometheus, 'recranker_request_duration_seconds_count{route="/rerank", outcome="degraded"}')["result"]
    assert float(rerank[0]["value"][1]) >= 2


def test_every_dashboard_expression_is_valid_promql(prometheus):
    for name, title, expr in dashboard_expressions():
        data = query(prometheus, expr.replace("$__rate_interval", "1m"))  # asserts Prometheus accepted it
        assert data["resultType"] == "vector", f"{name} / {title}: a panel query must give one series per legend entry"
