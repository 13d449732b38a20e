"""deploy/k8s/: every manifest validates against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors), and the pieces fit together (selectors, referenced ConfigMaps,
Secrets, volumes, probe ports, the HPA's target, GPUs for vLLM)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.metricnames import REPO

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALL = [doc for path in MANIFESTS for doc in documents(path)]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in ALL if doc["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    return {name: doc["spec"]["template"] for kind in ("Deployment", "StatefulSet") for name, doc in by_kind(kind).items()}


@pytest.mark.parametrize("doc", ALL, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_an_unknown_field():
    doc = yaml.safe_load(yaml.safe_dump(by_kind("Deployment")["recranker-gateway"]))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_everything_lives_in_one_namespace():
    assert {doc["metadata"].get("namespace") for doc in ALL if doc["kind"] != "Namespace"} == {"recranker"}


def test_every_service_selects_a_workloads_pods_on_a_named_port():
    pods = pod_specs()
    for name, service in by_kind("Service").items():
        matching = [p for p in pods.values() if service["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert len(matching) == 1, f"Service {name} selects {len(matching)} workloads"
        ports = {port["name"] for c in matching[0]["spec"]["containers"] for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: targetPort {port['targetPort']}"


def test_workloads_reference_only_objects_that_exist_and_probe_declared_ports():
    configmaps, secrets, claims = by_kind("ConfigMap"), by_kind("Secret"), by_kind("PersistentVolumeClaim")
    for name, pod in pod_specs().items():
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: {volume}"
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            templates = {t["metadata"]["name"] for t in by_kind("StatefulSet").get(name, {}).get("spec", {}).get("volumeClaimTemplates", [])}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, f"{name}: mount {mount['name']}"
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None:
                    assert port in ports, f"{name}: {probe} port {port}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), f"{name}: probes"


def test_gateway_scales_with_an_hpa_and_probes_its_health_routes():
    hpa = by_kind("HorizontalPodAutoscaler")["recranker-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "recranker-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    container = by_kind("Deployment")["recranker-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"], "the HPA's CPU utilisation needs a CPU request"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")


def test_vllm_runs_several_replicas_on_gpu_nodes_with_the_model_read_only():
    vllm = by_kind("Deployment")["vllm"]
    assert vllm["spec"]["replicas"] >= 2
    pod = vllm["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    model = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models/recranker")
    assert model["readOnly"] is True
    assert "--model=/models/recranker" in container["args"] and "--served-model-name=recranker" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_gateway_settings_name_real_settings_and_point_at_the_services():
    from service.gateway.settings import GatewaySettings

    fields = {f"RECRANKER_{name.upper()}" for name in GatewaySettings.model_fields}
    data = by_kind("ConfigMap")["recranker-gateway"]["data"]
    secret = by_kind("Secret")["recranker-gateway"]["stringData"]
    assert set(data) | set(secret) <= fields, sorted((set(data) | set(secret)) - fields)
    assert data["RECRANKER_REDIS_URL"].startswith("redis://redis:6379") and data["RECRANKER_LLM_URL"] == "http://vllm:8000"
    assert data["RECRANKER_HOST"] == "0.0.0.0"
    GatewaySettings.model_validate({k.removeprefix("RECRANKER_").lower(): v for k, v in data.items()})
