"""deploy/prometheus/prometheus.yml: valid for promtool, and it scrapes the services the Compose
stack really runs, on the ports they listen on. (A real Prometheus scraping a running gateway is
tests/integration/test_deploy_prometheus.py.)"""

from __future__ import annotations

import yaml

from tests.deploy.conftest import run, tool
from tests.deploy.metricnames import REPO

CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


def test_promtool_check_config_passes():
    result = run([tool("promtool"), "check", "config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path):
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("scrape_interval: 15s", "scrape_interval: fifteen", 1))
    result = run([tool("promtool"), "check", "config", str(broken)])
    assert result.returncode != 0


def test_scrape_targets_are_the_stacks_gateway_and_vllm():
    config = yaml.safe_load(CONFIG.read_text())
    targets = {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets["recranker-gateway"] == ["gateway:8080"]
    assert targets["vllm"] == ["vllm:8000"]
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())["services"]
    assert "gateway" in compose and "8080" in str(compose["gateway"]["ports"])
    for name in ("vllm", "vllm-cpu"):
        assert "vllm" in compose[name]["networks"]["default"]["aliases"]
        command = compose[name]["command"]
        assert command[command.index("--port") + 1] == "8000"
