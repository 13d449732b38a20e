"""deploy/docker-compose.yml, checked without a Docker engine: `docker-compose config` (Debian's
v1) validates it against the Compose schema and resolves it; the resolved file is then checked for
what a first `docker compose up` needs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import run, tool
from tests.deploy.metricnames import REPO

DEPLOY = REPO / "deploy"
PROFILES = {"gpu": "vllm", "cpu": "vllm-cpu"}  # profile -> the vLLM service it runs


def env_file_settings(text: str) -> dict[str, str]:
    """KEY=value lines of an env file, commented-out `# KEY=value` lines included with a leading '#'."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[("#" if m.group(1) else "") + m.group(2)] = m.group(3)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A copy of deploy/ beside a link to docker/, with .env made from .env.example (as the guide
    says), so `docker-compose config` sees the layout of a fresh clone and never a developer's .env."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(DEPLOY, root / "deploy", ignore=shutil.ignore_patterns(".env", "__pycache__"))
    for name in ("docker", "service", "training", "pyproject.toml", "README.md"):
        (root / name).symlink_to(REPO / name)
    shutil.copy(DEPLOY / ".env.example", root / "deploy" / ".env")
    return root


_CONFIGS: dict[tuple[str, str], dict] = {}


def compose_config(stack, profile: str) -> dict:
    """`docker-compose --profile P config`, resolved and validated (once per profile)."""
    key = (str(stack), profile)
    if key not in _CONFIGS:
        result = run([tool("docker-compose"), "--profile", profile, "config"], cwd=stack / "deploy")
        assert result.returncode == 0, f"docker-compose --profile {profile} config:\n{result.stderr}"
        _CONFIGS[key] = yaml.safe_load(result.stdout)
    return _CONFIGS[key]


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile_config(request, stack):
    return request.param, compose_config(stack, request.param)


def active(config: dict, profile: str) -> dict[str, dict]:
    """The services `docker compose --profile P up` starts (docker-compose v1's `config` lists all)."""
    return {name: svc for name, svc in config["services"].items() if not svc.get("profiles") or profile in svc["profiles"]}


def volumes(service: dict) -> list[dict]:
    """A service's volumes as {type, source, target, read_only}, from the long or the short form."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append({**volume, "read_only": bool(volume.get("read_only"))})
            continue
        source, target, *mode = volume.split(":")
        out.append({"type": "bind" if source.startswith("/") else "volume", "source": source, "target": target, "read_only": mode == ["ro"]})
    return out


def test_compose_config_rejects_an_invalid_file(stack, tmp_path):
    compose_file = (stack / "deploy" / "docker-compose.yml").read_text()
    broken = compose_file.replace("  gateway:\n    build:", "  gateway:\n    biuld:", 1)
    assert broken != compose_file
    (tmp_path / "docker-compose.yml").write_text(broken)
    shutil.copy(stack / "deploy" / ".env", tmp_path / ".env")
    result = run([tool("docker-compose"), "config", "-q"], cwd=tmp_path)
    assert result.returncode != 0 and "biuld" in result.stderr


def test_each_profile_runs_exactly_one_vllm_reachable_as_vllm(profile_config):
    profile, config = profile_config
    services = active(config, profile)
    assert set(services) == {"gateway", "redis", "prometheus", "grafana", PROFILES[profile]}
    aliases = services[PROFILES[profile]]["networks"]["default"]["aliases"]
    assert "vllm" in aliases, "the gateway and Prometheus reach either variant as vllm:8000"


def test_gpu_vllm_reserves_a_gpu_and_serves_the_model_read_only(stack):
    vllm = compose_config(stack, "gpu")["services"]["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert vllm["image"].startswith("vllm/vllm-openai:")
    for svc_name in ("vllm", "vllm-cpu"):
        svc = compose_config(stack, "gpu")["services"][svc_name]
        mounts = [v for v in volumes(svc) if v["target"] == "/models/recranker"]
        assert mounts and mounts[0]["read_only"] is True
        args = svc["command"]
        for flag in ("--served-model-name", "--max-logprobs", "--port"):
            assert flag in args, f"{svc_name}: {flag}"
        assert args[args.index("--model") + 1] == "/models/recranker"
        assert args[args.index("--port") + 1] == "8000"


def test_every_service_has_an_image_or_a_build_whose_dockerfile_exists(profile_config, stack):
    _, config = profile_config
    for name, svc in config["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = Path(svc["build"]["context"])
            dockerfile = svc["build"].get("dockerfile", "Dockerfile")
            assert context == stack, f"{name}: build context {context} is not the repository root"
            assert (REPO / dockerfile).is_file(), f"{name}: {dockerfile} does not exist"
        if "image" in svc:
            assert re.match(r"^[\w./-]+:[\w.-]+$", svc["image"]), f"{name}: image {svc['image']!r} has no tag"
            assert not svc["image"].endswith(":latest") or "build" in svc, f"{name}: pin the image of a service that is not built here"


def test_bind_mounts_from_deploy_exist(profile_config, stack):
    _, config = profile_config
    for name, svc in config["services"].items():
        for volume in volumes(svc):
            if volume["type"] == "bind" and str(stack / "deploy") in volume["source"]:
                assert (stack / "deploy" / volume["source"].split("/deploy/", 1)[1]).exists(), f"{name}: {volume['source']}"


def test_every_service_has_a_healthcheck_and_dependencies_wait_for_it(profile_config):
    profile, config = profile_config
    services = active(config, profile)
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on {dep}, which profile {profile} does not start"
            assert cond["condition"] in ("service_healthy", "service_started")
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_redis_persists_to_an_append_only_file_on_a_volume(stack):
    redis = compose_config(stack, "gpu")["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in volumes(redis))


def test_gateway_reaches_redis_and_vllm_by_service_name_and_reads_env_file(stack):
    gateway = compose_config(stack, "cpu")["services"]["gateway"]
    env = gateway["environment"]
    assert env["RECRANKER_REDIS_URL"].startswith("redis://redis:6379")
    assert env["RECRANKER_LLM_URL"] == "http://vllm:8000"
    assert env["RECRANKER_LOG_LEVEL"] == "INFO", "settings from .env reach the gateway (env_file)"
    mounts = {v["target"]: v for v in volumes(gateway)}
    assert mounts["/app/artifacts"]["read_only"] and mounts["/app/model"]["read_only"]
    assert env["RECRANKER_MODEL_DIR"] == "/app/model"
    served = next(v for v in volumes(compose_config(stack, "cpu")["services"]["vllm-cpu"]) if v["target"] == "/models/recranker")
    assert mounts["/app/model"]["source"] == served["source"], "the gateway reads the manifest of the model vLLM serves"
    assert any(p["target"] == 8080 for p in gateway["ports"])


def test_prometheus_and_grafana_mount_the_files_of_deploy(stack):
    config = compose_config(stack, "gpu")["services"]
    prom_mounts = {v["target"]: v["source"] for v in volumes(config["prometheus"])}
    assert prom_mounts["/etc/prometheus/prometheus.yml"].endswith("deploy/prometheus/prometheus.yml")
    grafana_mounts = {v["target"]: v["source"] for v in volumes(config["grafana"])}
    assert grafana_mounts["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")


def test_env_example_documents_every_gateway_setting_with_its_default(tmp_path, monkeypatch):
    from service.gateway.settings import GatewaySettings

    documented = env_file_settings((DEPLOY / ".env.example").read_text())
    fields = {f"RECRANKER_{name.upper()}" for name in GatewaySettings.model_fields}
    named = {k.lstrip("#") for k in documented if k.lstrip("#").startswith("RECRANKER_")}
    assert fields - named == set(), f"settings missing from deploy/.env.example: {sorted(fields - named)}"
    assert named - fields == set(), f"deploy/.env.example names settings the gateway does not have: {sorted(named - fields)}"
    # The uncommented values are the defaults: loading the file changes nothing.
    for key in list(__import__("os").environ):
        if key.startswith("RECRANKER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env
    example = tmp_path / "example.env"
    example.write_text("\n".join(f"{k}={v}" for k, v in documented.items() if k.startswith("RECRANKER_")) + "\n")
    assert GatewaySettings(_env_file=example).model_dump() == GatewaySettings().model_dump()
