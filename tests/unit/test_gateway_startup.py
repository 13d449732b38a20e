"""Start-up failures are one line naming what is missing and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def test_a_missing_backbone_stops_the_gateway_with_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn"}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no exported backbone" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in run.stderr + run.stdout


def test_missing_serving_tables_stop_the_gateway_with_one_line_naming_the_export_command(tmp_path):
    backbone = tmp_path / "ml-100k" / "backbones" / "lightgcn"
    backbone.mkdir(parents=True)
    np.save(backbone / "item_vectors.npy", np.zeros((2, 2), dtype=np.float32))
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn"}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no serving tables" in lines[0] and "python -m training data" in lines[0]
    assert "Traceback" not in run.stderr + run.stdout


def test_a_serving_policy_the_gateway_cannot_read_stops_it_with_one_line_naming_the_file(tmp_path):
    from tests.conftest import synthetic_dataset
    from training.data.serving_export import write_serving_tables

    backbone = tmp_path / "ml-100k" / "backbones" / "lightgcn"
    backbone.mkdir(parents=True)
    np.save(backbone / "item_vectors.npy", np.zeros((2, 2), dtype=np.float32))
    write_serving_tables(synthetic_dataset(n_users=4, n_items=10, per_user=3), tmp_path / "ml-100k" / "serving")
    policy = tmp_path / "ml-100k" / "model" / "policy" / "lightgcn"
    policy.mkdir(parents=True)
    (policy / "policy.json").write_text('{"format_version": 0, "method": "learned_no_llm"}')
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn", "RECRANKER_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(policy / "policy.json") in lines[0] and "make tune" in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_a_bad_setting_stops_the_gateway_with_one_line_naming_it(tmp_path):
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_HYBRID_WEIGHTS": '{"pointwise": 1, "ratings": 1}'}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "RECRANKER_HYBRID_WEIGHTS" in lines[0] and "ratings" in lines[0], run.stderr


def test_a_model_tuned_on_other_data_stops_the_gateway_with_one_line_naming_both(tmp_path):
    import json

    from tests.conftest import synthetic_dataset
    from training.data.serving_export import write_serving_tables

    backbone = tmp_path / "ml-100k" / "backbones" / "lightgcn"
    backbone.mkdir(parents=True)
    np.save(backbone / "item_vectors.npy", np.zeros((10, 2), dtype=np.float32))
    write_serving_tables(synthetic_dataset(n_users=4, n_items=10, per_user=3), tmp_path / "ml-100k" / "serving")
    model = tmp_path / "ml-100k" / "model"
    model.mkdir(parents=True)
    (model / "manifest.json").write_text(json.dumps({"data_fingerprint": "0123456789abcdef"}))
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn", "RECRANKER_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "was tuned on data 0123456789ab" in lines[0] and "DATASET=" in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_a_backbone_trained_on_other_data_stops_the_gateway_with_one_line_naming_both(tmp_path):
    import json

    from tests.conftest import synthetic_dataset
    from training.data.fingerprint import dataset_fingerprint
    from training.data.serving_export import write_serving_tables

    data = synthetic_dataset(n_users=4, n_items=10, per_user=3)
    backbone = tmp_path / "ml-100k" / "backbones" / "lightgcn"
    backbone.mkdir(parents=True)
    np.save(backbone / "item_vectors.npy", np.zeros((10, 2), dtype=np.float32))
    (backbone / "metrics.json").write_text(json.dumps({"dataset_fingerprint": "fedcba9876543210"}))
    write_serving_tables(data, tmp_path / "ml-100k" / "serving")
    model = tmp_path / "ml-100k" / "model"
    model.mkdir(parents=True)
    (model / "manifest.json").write_text(json.dumps({"data_fingerprint": dataset_fingerprint(data)}))
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn", "RECRANKER_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{backbone} was trained on data fedcba987654" in lines[0] and dataset_fingerprint(data)[:12] in lines[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout
