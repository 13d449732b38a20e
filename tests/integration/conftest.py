"""Fixtures that cost minutes, shared by the integration tests: one tiny tuning run and one real
vLLM (CPU) server on its merged export."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.llm.vllm_server import VLLMServer
from tests.conftest import CACHE
from training.paths import Paths
from training.pipeline import TuneRequest, run_tune

TINY = TuneRequest(backbone="pop", profile="tiny", sampling="uniform", hints="honest")  # the honest path is the one with more moving parts


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_export(tiny_artifacts) -> Path:
    return run_tune(TINY, Paths(cache=CACHE, artifacts=tiny_artifacts))


@pytest.fixture(scope="session")
def vllm_tiny(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    # float32: the tiny model's near-uniform answers tie in bf16's coarse logprobs (0.125 apart),
    # and which tied token comes first then depends on the batch shape
    with VLLMServer(tiny_export, dtype="float32", cache_dir=CACHE / "vllm", log_file=log) as server:
        yield server
