"""The embedded default: ML-100K read from the files inside the recbole 1.2.1 wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CACHE
from training.data import DataError
from training.data.embedded import RECBOLE_WHEEL, extract_ml100k

REPO = Path(__file__).resolve().parents[2]


def test_embedded_ml100k_has_the_published_counts(ml100k):
    assert ml100k.summary() == {"dataset": "ml-100k", "users": 943, "items": 1682, "ratings": 100000}
    assert ml100k.items[ml100k.item_index["1"]].title == "Toy Story"
    assert ml100k.users[ml100k.user_index["1"]].occupation == "technician"
    assert set(ml100k.ratings.rating.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_data_command_prints_counts_and_split_sizes(tmp_path):
    env = {**os.environ, "RECRANKER_CACHE_DIR": str(CACHE), "RECRANKER_ARTIFACTS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "training", "data"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for needle in ("943", "1682", "100000", "evaluated_users", "942", "train_liked"):
        assert needle in out.stdout
    assert (tmp_path / "ml-100k" / "serving" / "items.jsonl").read_text().count("\n") == 1682


def test_corrupt_wheel_leaves_no_partial_cache_and_is_discarded(tmp_path):
    bad = tmp_path / RECBOLE_WHEEL
    with zipfile.ZipFile(bad, "w") as zf:  # a zip without the data files
        zf.writestr("recbole/__init__.py", "")
    target = tmp_path / "data" / "ml-100k"
    with pytest.raises(DataError, match="not a usable recbole wheel"):
        extract_ml100k(bad, target)
    assert not target.exists()
    assert not any(p.name.startswith(".ml-100k") for p in (tmp_path / "data").iterdir())
    assert not bad.exists()
