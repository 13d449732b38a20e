"""Artefacts are keyed by the content of the data they came from, not by the data set's name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import CACHE, synthetic_dataset
from training.backbones.training import train_backbone
from training.data import DataError, leave_one_out
from training.data.fingerprint import dataset_fingerprint, split_fingerprint
from training.evaluation.evaluate import EvalRequest, run_eval
from training.paths import Paths
from training.tuning.pipeline import TuneRequest
from training.tuning.tune import PROFILES


def test_same_content_same_fingerprint_and_any_changed_rating_changes_it():
    a, b = synthetic_dataset(seed=0), synthetic_dataset(seed=0)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    b.ratings.rating[17] = 3.0
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    renamed = dataclasses.replace(synthetic_dataset(seed=0), items=[dataclasses.replace(it, title=it.title + "!") for it in a.items])
    assert dataset_fingerprint(renamed) != dataset_fingerprint(a)


def test_a_backbone_trained_on_other_data_of_the_same_name_is_retrained_not_reused(tmp_path):
    paths = Paths(cache=CACHE, artifacts=tmp_path)
    first, other = synthetic_dataset(n_items=80, seed=0), synthetic_dataset(n_items=80, seed=1)  # 80: the stored top-50 lists
    assert first.name == other.name
    a = train_backbone("pop", first, leave_one_out(first), paths)
    again = train_backbone("pop", first, leave_one_out(first), paths)
    assert again == a  # same data: skipped, the stored report returned
    b = train_backbone("pop", other, leave_one_out(other), paths)
    assert b["data_fingerprint"] == split_fingerprint(leave_one_out(other)) != a["data_fingerprint"]
    stored = json.loads((paths.backbone_dir(other.name, "pop") / "metrics.json").read_text())
    assert stored["data_fingerprint"] == b["data_fingerprint"]


def test_the_tuning_key_follows_the_data_content_not_its_folder():
    profile = PROFILES["tiny"]
    here, there = TuneRequest(data_path=None), TuneRequest(data_path=Path("/elsewhere/ml-100k"))
    assert here.key(profile, "f1") == there.key(profile, "f1")
    assert here.key(profile, "f1") != here.key(profile, "f2")


def test_eval_refuses_a_model_tuned_on_other_data(tmp_path, ml100k):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"run_key": "k", "data_fingerprint": "0" * 64, "prompt_config": {}}))
    with pytest.raises(DataError, match="was tuned on other data"):
        run_eval(EvalRequest(model_dir=model, reports_dir=tmp_path / "reports"), Paths(cache=CACHE, artifacts=tmp_path))
