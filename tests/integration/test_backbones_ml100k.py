"""Slow tier: every backbone trains on the embedded ML-100K with its CPU defaults, and the learned
ones beat popularity on the test items (README's table comes from the same command)."""

from __future__ import annotations

import pytest

from tests.conftest import CACHE
from training.backbones import REGISTRY
from training.paths import Paths
from training.pipeline import train_backbone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reports(ml100k, ml100k_split, tmp_path_factory):
    paths = Paths(cache=CACHE, artifacts=tmp_path_factory.mktemp("artifacts"))
    return {name: train_backbone(name, ml100k, ml100k_split, paths) for name in REGISTRY}


@pytest.mark.parametrize("name", ["mf", "lightgcn", "sasrec"])
def test_learned_backbone_beats_popularity(reports, name):
    assert reports[name]["NDCG@10"] > reports["pop"]["NDCG@10"]
    assert reports[name]["HR@10"] > reports["pop"]["HR@10"]


def test_every_backbone_writes_metrics_for_all_cutoffs(reports):
    for name, report in reports.items():
        assert report["evaluated_users"] == 942, name
        assert {f"{m}@{k}" for m in ("HR", "NDCG") for k in (3, 5, 10)} <= set(report), name
