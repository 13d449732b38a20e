"""What a trained backbone leaves on disk for evaluation, tuning and serving.

artifacts/<dataset>/backbones/<name>/
  metrics.json        test HR@k / NDCG@k over the full catalogue (rated items masked), plus validation
  config.json, model.pt (or the model's own state)   reload with Backbone.load
  item_vectors.npy    (n_items, d); scores are user_vector . item_vector
  user_vectors.npy    (n_users, d) at test time (sequential models: from train likes + validation item)
  candidates.jsonl    per evaluated user the top-m item ids at 'valid' and 'test' time, rated items masked
  train_log.json      epochs, best epoch, validation curve, seconds
The folder is written under a temporary name and renamed at the end, so an interrupted run leaves
no folder that looks trained.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from service.llm.hardware import machine_description
from training.backbones.base import Backbone, TrainLog, log_as_dict
from training.data.fingerprint import dataset_fingerprint
from training.data.split import Split
from training.fsutil import atomic_folder

CANDIDATES_M = 50


def candidate_lists(model: Backbone, split: Split, stage: str, users: np.ndarray, m: int) -> np.ndarray:
    histories = [split.history(u, stage) for u in users]
    exclude = [split.known_items(u, stage) for u in users]
    return model.top_m(users, histories, exclude, m)


def write_backbone_artifacts(model: Backbone, split: Split, log: TrainLog, folder: Path, m: int = CANDIDATES_M, data_fingerprint: str | None = None) -> dict:
    dataset = split.dataset
    users = split.evaluated_users()
    metrics = model.evaluate(split, "test")
    report = {
        **metrics,
        "stage": "test",
        "backbone": model.name,
        "dataset": dataset.name,
        "evaluated_users": int(len(users)),
        "n_items": dataset.n_items,
        "valid": model.evaluate(split, "valid"),
        "best_epoch": log.best_epoch,
        "train_seconds": round(log.seconds, 2),
        "data_fingerprint": data_fingerprint,  # of the split it was fitted on (training.data.fingerprint)
        "dataset_fingerprint": dataset_fingerprint(dataset),  # of the data set, as the serving tables and the model manifest state it
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }
    with atomic_folder(folder) as staging:
        model.save(staging)
        all_users = np.arange(dataset.n_users)
        np.save(staging / "item_vectors.npy", model.item_vectors().astype(np.float32))
        np.save(staging / "user_vectors.npy", model.user_vectors(all_users, [split.history(u, "test") for u in all_users]).astype(np.float32))
        valid_top = candidate_lists(model, split, "valid", users, m)
        test_top = candidate_lists(model, split, "test", users, m)
        item_ids = [it.item_id for it in dataset.items]
        with (staging / "candidates.jsonl").open("w") as fh:
            for row, u in enumerate(users):
                fh.write(json.dumps({
                    "user_id": dataset.users[u].user_id,
                    "valid": [item_ids[i] for i in valid_top[row]],
                    "test": [item_ids[i] for i in test_top[row]],
                }) + "\n")
        (staging / "train_log.json").write_text(json.dumps(log_as_dict(log), indent=2))
        (staging / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def load_backbone(folder: Path) -> Backbone:
    from training.backbones import get_backbone

    meta = json.loads((folder / "config.json").read_text())
    return get_backbone(meta["backbone"]).load(folder)


def training_time_scores(model: Backbone, split: Split) -> np.ndarray:
    """Every user's scores over all items as of the validation time (training data only)."""
    users = np.arange(split.n_users)
    return model.score(users, [split.history(u, "valid") for u in users])
