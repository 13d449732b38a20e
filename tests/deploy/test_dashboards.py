"""The Grafana dashboards: generated from code (the committed JSON is the generator's output), and
every PromQL expression names a metric that the gateway or vLLM exposes. The gateway's names come
from its own metrics registry; vLLM's from the installed vllm package's source. The same names are
checked against a running gateway, a real vLLM server and a real Prometheus in
tests/integration/test_deploy_prometheus.py."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from tests.deploy.metricnames import (
    DASHBOARD_DIR,
    REPO,
    TARGET_LABELS,
    dashboard_expressions,
    dashboard_metric_names,
    dashboards,
    exposed_names,
    panels,
    promql_label_names,
    promql_metric_names,
    vllm_defined_names,
)

GENERATOR = REPO / "deploy" / "grafana" / "generate.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("recranker_dashboards", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def gateway_names() -> set[str]:
    from service.gateway.metrics import GatewayMetrics

    return exposed_names(generate_latest(GatewayMetrics().registry).decode())


@pytest.fixture(scope="module")
def vllm_names() -> set[str]:
    spec = importlib.util.find_spec("vllm")  # located, not imported (that would load torch)
    assert spec is not None and spec.submodule_search_locations, "vllm is not installed: run `make install`"
    names = vllm_defined_names(Path(spec.submodule_search_locations[0]))
    assert "vllm:num_requests_running" in names, "vLLM's metric definitions moved: update tests/deploy/metricnames.py"
    return names


def test_committed_dashboards_are_the_generators_output():
    generated = load_generator().dashboards()
    committed = {p.name for p in DASHBOARD_DIR.glob("*.json")}
    assert committed == set(generated), "a dashboard JSON without generator, or not generated yet"
    for name, text in generated.items():
        assert (DASHBOARD_DIR / name).read_text() == text, f"{name} is stale: run .venv/bin/python deploy/grafana/generate.py"


def test_dashboards_cover_the_issue(gateway_names):
    titles = {board["title"]: {p["title"] for p in panels(board) if p.get("type") != "row"} for board in dashboards().values()}
    assert set(titles) == {"RecRanker / Gateway", "RecRanker / vLLM"}
    exprs = " ".join(e for _, _, e in dashboard_expressions())
    for needed in ("recranker_request_duration_seconds_bucket", "recranker_stage_duration_seconds_bucket", "recranker_degraded_total",
                   "recranker_cache_requests_total", "recranker_llm_errors_total", "recranker_llm_repaired_answers_total",
                   "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:e2e_request_latency_seconds_bucket", "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total"):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, route)" in exprs and f"histogram_quantile({q}, sum by (le, stage)" in exprs


def test_every_gateway_metric_in_a_dashboard_is_exposed_by_the_gateway(gateway_names):
    used = {n for n in dashboard_metric_names() if not n.startswith("vllm:")}
    assert used, "no gateway metric found in the dashboards"
    assert used - gateway_names == set(), f"dashboards read metrics the gateway does not expose: {sorted(used - gateway_names)}"


def gateway_declared_labels() -> dict[str, set[str]]:
    """Series name -> label names, from the metric objects the gateway registers."""
    from prometheus_client.metrics import MetricWrapperBase

    from service.gateway.metrics import GatewayMetrics

    out = {}
    for metric in vars(GatewayMetrics()).values():
        if isinstance(metric, MetricWrapperBase):
            for series in exposed_names(generate_latest_of(metric)):
                out[series] = set(metric._labelnames) | ({"le"} if series.endswith("_bucket") else set())
    return out


def generate_latest_of(metric) -> str:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(metric)
    return generate_latest(registry).decode()


def test_every_label_a_gateway_panel_uses_is_declared_by_the_gateway():
    declared = gateway_declared_labels()
    assert declared["recranker_request_duration_seconds_bucket"] == {"route", "outcome", "le"}
    for name, title, expr in dashboard_expressions():
        metrics = promql_metric_names(expr)
        if any(m.startswith("vllm:") for m in metrics):
            continue
        carried = set().union(*(declared[m] for m in metrics)) | TARGET_LABELS
        missing = promql_label_names(expr) - carried
        assert not missing, f"{name} / {title}: {sorted(metrics)} have no label(s) {sorted(missing)}"


def test_label_names_are_read_from_selectors_and_groupings():
    expr = 'sum by (le, stage) (rate(a_bucket{route="/x", outcome!~"ok|y"}[5m])) / ignoring(kind) b{task="pointwise"}'
    assert promql_label_names(expr) == {"le", "stage", "route", "outcome", "kind", "task"}


def test_every_vllm_metric_in_a_dashboard_is_defined_by_the_installed_vllm(vllm_names):
    used = {n for n in dashboard_metric_names() if n.startswith("vllm:")}
    assert used, "no vLLM metric found in the dashboards"
    assert used - vllm_names == set(), f"dashboards read metrics vLLM does not define: {sorted(used - vllm_names)}"


def test_the_name_check_catches_a_misspelled_metric(gateway_names, vllm_names):
    names = promql_metric_names('sum by (route) (rate(recranker_request_duration_second_count{route="/rerank"}[5m])) / vllm:num_request_running')
    assert names == {"recranker_request_duration_second_count", "vllm:num_request_running"}
    assert not names & (gateway_names | vllm_names)


def test_metric_names_are_read_past_functions_labels_and_strings():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{stage=~"llm_.*", x="b_total"}[$__rate_interval])))'
            " / ignoring(stage) group_left sum without (instance) (b_total offset 5m) > bool 0")
    assert promql_metric_names(expr) == {"a_bucket", "b_total"}


def test_quantiles_aggregate_buckets_by_le():
    for name, title, expr in dashboard_expressions():
        for match in re.finditer(r"histogram_quantile\(([\d.]+), sum by \(([^)]*)\) \(rate\((\w[\w:]*)", expr):
            assert "le" in [s.strip() for s in match.group(2).split(",")], f"{name} / {title}: {expr}"
            assert match.group(3).endswith("_bucket"), f"{name} / {title}: {expr}"


def test_panels_read_the_provisioned_datasource():
    provisioned = yaml.safe_load((REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"]["uid"] in uids, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids and target["refId"]


def test_dashboard_provider_points_at_the_folder_grafana_mounts():
    provider = yaml.safe_load((DASHBOARD_DIR / "recranker.yml").read_text())["providers"][0]
    compose = (REPO / "deploy" / "docker-compose.yml").read_text()
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
