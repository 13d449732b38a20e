"""The backbones learn: trained on the embedded ML-100K, the learned ones beat popularity on the test
items.

Default tier: one embedding backbone (MF) and one sequence backbone (SASRec) on a short budget
(a few epochs, a smaller SASRec), seconds each. Slow tier: every backbone with its CPU defaults
(README's table comes from the same command)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import CACHE
from training.backbones import REGISTRY, get_backbone
from training.paths import Paths
from training.tuning.pipeline import train_backbone

# Enough to separate each from popularity by a wide margin on test NDCG@10 (0.068 MF, 0.086 SASRec,
# 0.049 popularity), far short of the early-stopped defaults.
SHORT_BUDGET = {
    "mf": {"epochs": 3, "eval_every": 3, "lr": 0.01},
    "sasrec": {"epochs": 3, "eval_every": 3, "max_len": 20, "dim": 32, "layers": 1, "batch_size": 256, "lr": 0.01},
}


@pytest.fixture(scope="module")
def one_thread():
    # small models on 2 shared cores: torch's thread pool fighting the other work made these
    # trainings 4x slower than one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_metrics(name: str, split, **config) -> dict[str, float]:
    cls = get_backbone(name)
    model = cls(split.n_users, split.n_items, cls.Config(**config))
    model.fit(split, progress=False)
    return model.evaluate(split, "test")


@pytest.fixture(scope="module")
def popularity(ml100k_split) -> dict[str, float]:
    return trained_metrics("pop", ml100k_split)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(SHORT_BUDGET))
def test_a_learned_backbone_beats_popularity_after_a_short_training(ml100k_split, popularity, one_thread, name):
    got = trained_metrics(name, ml100k_split, **SHORT_BUDGET[name])
    assert got["NDCG@10"] > popularity["NDCG@10"]
    assert got["HR@10"] > popularity["HR@10"]


@pytest.fixture(scope="module")
def reports(ml100k, ml100k_split, tmp_path_factory):
    paths = Paths(cache=CACHE, artifacts=tmp_path_factory.mktemp("artifacts"))
    return {name: train_backbone(name, ml100k, ml100k_split, paths) for name in REGISTRY}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mf", "lightgcn", "sasrec"])
def test_learned_backbone_beats_popularity(reports, name):
    assert reports[name]["NDCG@10"] > reports["pop"]["NDCG@10"]
    assert reports[name]["HR@10"] > reports["pop"]["HR@10"]


@pytest.mark.slow
def test_every_backbone_writes_metrics_for_all_cutoffs(reports):
    for name, report in reports.items():
        assert report["evaluated_users"] == 942, name
        assert {f"{m}@{k}" for m in ("HR", "NDCG") for k in (3, 5, 10)} <= set(report), name
