"""`make serve DATASET=... DATA_PATH=...` serves that data set: the Makefile's DATASET reaches the
stack, which reads that data set's tables, model and backbone, and refuses a model tuned on other data.

The data set is a small synthetic one in ML-1M's format written here; the model folder is a stand-in
whose manifest names the data it was tuned on (what the start-up checks read), so the check runs in
seconds: the stack states what it serves before it starts vLLM, and the test stops it there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CACHE
from training.backbones.training import train_backbone
from training.data import leave_one_out, load_dataset
from training.data.fingerprint import dataset_fingerprint
from training.data.synthetic import synthetic_movielens, write_grouplens_1m
from training.paths import Paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_ml1m(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("own-data")
    data = write_grouplens_1m(synthetic_movielens(6000, n_users=60, n_items=300, seed=3), root / "data")
    artifacts = root / "artifacts"
    dataset = load_dataset("ml-1m", data)
    train_backbone("pop", dataset, leave_one_out(dataset), Paths(cache=CACHE, artifacts=artifacts))
    return {"data": data, "artifacts": artifacts, "fingerprint": dataset_fingerprint(dataset), "item_ids": {it.item_id for it in dataset.items}}


def write_atomic(dataset, folder: Path, name: str) -> Path:
    """`dataset` as a RecBole atomic set named `name` (tab-separated, typed headers)."""
    folder.mkdir(parents=True)
    r = dataset.ratings
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{dataset.users[u].user_id}\t{dataset.items[i].item_id}\t{v:g}\t{t}" for u, i, v, t in zip(r.user, r.item, r.rating, r.timestamp, strict=True)]
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"]
    items += [f"{it.item_id}\t{it.title}\t{it.year}\t{' '.join(g.replace(' ', '-') for g in it.genres)}" for it in dataset.items]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u.user_id}\t30\t{u.gender}\twriter\t1" for u in dataset.users]
    (folder / f"{name}.user").write_text("\n".join(users) + "\n")
    return folder


def stand_in_model(folder: Path, tuned_on: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"data_fingerprint": tuned_on, "run_key": "stand-in"}))
    return folder


def make_serve(small: dict, model: Path, *make_vars: str) -> subprocess.Popen:
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(small["artifacts"]), "RECRANKER_MODEL_DIR": str(model), "RECRANKER_BACKBONE": "pop",
           "RECRANKER_CACHE_DIR": str(small["artifacts"].parent / "cache"), "RECRANKER_REDIS_URL": "memory://"}
    env.pop("MAKEFLAGS", None)
    return subprocess.Popen(["make", "--no-print-directory", "serve", *make_vars], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def lines_until(proc: subprocess.Popen, marker: str, limit_s: float = 240) -> list[str]:
    """The stack's output up to the line holding `marker` (or its end), then the stack stopped."""
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if marker in line or time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return lines


@pytest.mark.timeout(300)
def test_make_serve_with_dataset_serves_that_data_sets_tables_and_model(small_ml1m, tmp_path):
    model = stand_in_model(tmp_path / "model", small_ml1m["fingerprint"])
    out = lines_until(make_serve(small_ml1m, model, "DATASET=ml-1m", f"DATA_PATH={small_ml1m['data']}"), "starting vLLM")
    serving = [line for line in out if re.match(r"serving \S+ \(data ", line)]
    assert serving, "\n".join(out)
    assert serving[0].startswith(f"serving ml-1m (data {small_ml1m['fingerprint'][:12]}, tables {small_ml1m['artifacts'] / 'ml-1m' / 'serving'})")
    assert "with model stand-in" in serving[0] and str(small_ml1m["artifacts"] / "ml-1m" / "backbones" / "pop") in serving[0]
    # `make serve` wrote the serving tables of those files (they were missing): that data set's items.
    items = json.loads((small_ml1m["artifacts"] / "ml-1m" / "serving" / "meta.json").read_text())
    assert items["dataset"] == "ml-1m"


@pytest.mark.timeout(300)
def test_make_serve_refuses_a_model_tuned_on_other_data_with_one_line_and_exit_2(small_ml1m, tmp_path):
    model = stand_in_model(tmp_path / "model", "0123456789abcdef" * 4)
    proc = make_serve(small_ml1m, model, "DATASET=ml-1m", f"DATA_PATH={small_ml1m['data']}")
    out, _ = proc.communicate(timeout=240)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, out
    assert len(errors) == 1 and "was tuned on data 0123456789ab" in errors[0] and f"ml-1m {small_ml1m['fingerprint'][:12]}" in errors[0], out
    assert "Traceback" not in out


@pytest.mark.timeout(300)
def test_make_serve_finds_an_atomic_sets_artefacts_under_its_inter_files_name(small_ml1m, tmp_path):
    data = write_atomic(synthetic_movielens(6000, n_users=60, n_items=300, seed=4), tmp_path / "books", "my-books")
    dataset = load_dataset("atomic", data)
    artifacts = small_ml1m["artifacts"]
    train_backbone("pop", dataset, leave_one_out(dataset), Paths(cache=CACHE, artifacts=artifacts))
    model = stand_in_model(tmp_path / "model", dataset_fingerprint(dataset))
    out = lines_until(make_serve(small_ml1m, model, "DATASET=atomic", f"DATA_PATH={data}"), "starting vLLM")
    serving = [line for line in out if re.match(r"serving \S+ \(data ", line)]
    assert serving and serving[0].startswith(f"serving my-books (data {dataset_fingerprint(dataset)[:12]}, tables {artifacts / 'my-books' / 'serving'})"), "\n".join(out)
