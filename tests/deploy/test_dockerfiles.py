"""The images under docker/: hadolint-clean, and built the way the deployment guide promises
(multi-stage, non-root, a healthcheck on the servers, a build context that holds what they copy)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from tests.deploy.conftest import run, tool
from tests.deploy.metricnames import REPO

DOCKERFILES = sorted(p for p in (REPO / "docker").glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))
SERVERS = {"Dockerfile.gateway": "/healthz", "Dockerfile.vllm-cpu": "/health"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_there_are_the_three_images():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.gateway", "Dockerfile.vllm-cpu", "Dockerfile.training"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = run([tool("hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install gcc\nRUN cd /src && make\n")
    result = run([tool("hadolint"), "--no-color", str(bad)])
    assert result.returncode != 0
    assert {"DL3007", "DL3015", "DL3003"} <= set(re.findall(r"DL\d{4}", result.stdout))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_and_runs_as_a_non_root_user(dockerfile):
    steps = instructions(dockerfile)
    assert sum(word == "FROM" for word, _ in steps) >= 2, "build tools must stay in a build stage"
    final = final_stage(dockerfile)
    assert any(word == "COPY" and "--from=" in args for word, args in final), "the final stage copies the built environment"
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} must end as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "a numeric uid, so Kubernetes' runAsNonRoot can verify it"
    installed = " ".join(args for word, args in final if word == "RUN")
    for build_tool in ("build-essential", "gcc", "g++", "make ", "git "):
        assert build_tool not in installed, f"{dockerfile.name}: {build_tool.strip()} in the final stage"


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_servers_have_a_healthcheck_on_their_health_route(name):
    healthchecks = [args for word, args in final_stage(REPO / "docker" / name) if word == "HEALTHCHECK"]
    assert healthchecks and SERVERS[name] in healthchecks[-1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            result = not negate
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_what_an_image_copies_is_in_the_repository_and_not_dockerignored(dockerfile):
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore_file.is_file(), f"{ignore_file.name} keeps artefacts, caches and .venv out of the build context"
    patterns = [ln.strip() for ln in ignore_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for word, args in instructions(dockerfile):
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
            assert not ignored(source.rstrip("/"), patterns), f"{dockerfile.name}: COPY {source} is excluded by {ignore_file.name}"


def test_the_gateway_image_ships_no_training_code():
    gateway = (REPO / "docker" / "Dockerfile.gateway").read_text()
    ignore = (REPO / "docker" / "Dockerfile.gateway.dockerignore").read_text().splitlines()
    copies = [line for line in gateway.splitlines() if line.startswith("COPY") and "--from" not in line]
    assert copies and not any("training" in line for line in copies)
    assert "!training/" not in ignore and "!service/" in ignore
