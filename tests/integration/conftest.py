"""Fixtures that cost minutes, shared by the integration tests: one tiny tuning run and one real
vLLM (CPU) server on its merged export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.llm.vllm_server import VLLMServer
from tests.conftest import CACHE
from training.data.serving_export import write_serving_tables
from training.evaluation.workflow import run_tune
from training.paths import Paths
from training.tuning.pipeline import TuneRequest

TINY = TuneRequest(backbone="pop", profile="tiny", sampling="uniform", hints="honest")  # the honest path is the one with more moving parts


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_export(tiny_artifacts) -> Path:
    return run_tune(TINY, Paths(cache=CACHE, artifacts=tiny_artifacts))


@pytest.fixture(scope="session")
def tiny_item_tokens_export(tiny_artifacts) -> Path:
    """The tiny run with collaborative item tokens beside the titles, in its own export folder
    beside `tiny_export`'s (the two share the hint backbone)."""
    req = replace(TINY, item_tokens="beside", export_dir=tiny_artifacts / "ml-100k" / "model-item_tokens")
    return run_tune(req, Paths(cache=CACHE, artifacts=tiny_artifacts))


@pytest.fixture(scope="session")
def vllm_tiny(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    # float32: the tiny model's near-uniform answers tie in bf16's coarse logprobs (0.125 apart),
    # and which tied token comes first then depends on the batch shape
    with VLLMServer(tiny_export, dtype="float32", cache_dir=CACHE / "vllm", log_file=log) as server:
        yield server


CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="session")
def gateway_artifacts(tmp_path_factory, ml100k) -> Path:
    """The smallest artefacts tree a gateway starts on, in seconds: the serving tables, a random
    backbone, and two model folders (one with a chat template, one without)."""
    root = tmp_path_factory.mktemp("gateway-artifacts")
    tables = root / "ml-100k"
    write_serving_tables(ml100k, tables / "serving")
    backbone = tables / "backbones" / "random"
    backbone.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(backbone / "user_vectors.npy", rng.normal(size=(ml100k.n_users, 8)).astype(np.float32))
    np.save(backbone / "item_vectors.npy", rng.normal(size=(ml100k.n_items, 8)).astype(np.float32))
    (backbone / "config.json").write_text(json.dumps({"backbone": "random"}))
    (root / "model-completions").mkdir()
    (root / "model-completions" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (root / "model-chat").mkdir()
    return root
