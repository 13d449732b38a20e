"""Train one backbone on a split and export it (`artifacts/<dataset>/backbones/<name>`), or reuse the
export already trained on that split: what `make backbones`, tuning, evaluation and the LM-signal
study all call.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from training.backbones.artifacts import write_backbone_artifacts
from training.data import Dataset, Split
from training.data.fingerprint import split_fingerprint
from training.paths import Paths

console = Console(soft_wrap=True)


# Seconds between backbone checkpoints: an interruption loses at most this much training.
CHECKPOINT_EVERY_S = 30.0


def train_backbone(name: str, dataset: Dataset, split: Split, paths: Paths, overrides: dict | None = None, force: bool = False, folder: Path | None = None) -> dict:
    from training.backbones import get_backbone

    folder = folder or paths.backbone_dir(dataset.name, name)
    fingerprint = split_fingerprint(split)
    if (folder / "metrics.json").is_file() and not force:
        trained = json.loads((folder / "metrics.json").read_text())
        if trained.get("data_fingerprint") == fingerprint:
            console.print(f"[dim]{name}: already trained on this data ({folder}/metrics.json), skipped[/dim]")
            return trained
        console.print(f"{name}: {folder} was trained on other data (fingerprint {str(trained.get('data_fingerprint'))[:12]}, "
                      f"this data {fingerprint[:12]}): retraining")
    cls = get_backbone(name)
    config = cls.Config(**{**cls.Config().model_dump(), **(overrides or {})})
    model = cls(dataset.n_users, dataset.n_items, config)
    # The same backbone, settings and split resume from this file after an interruption; it goes
    # once the artefacts are written.
    checkpoint = folder.parent / ".checkpoints" / f"{folder.name}-{model.checkpoint_key(fingerprint)}.pt"
    resume = " (resuming from its checkpoint)" if checkpoint.is_file() else ""
    console.print(f"training [bold]{name}[/bold] on {model.device}{resume}: {config.model_dump()}")
    log = model.fit(split, checkpoint=checkpoint, checkpoint_every_s=CHECKPOINT_EVERY_S)
    report = write_backbone_artifacts(model, split, log, folder, data_fingerprint=fingerprint)
    checkpoint.unlink(missing_ok=True)
    console.print(
        f"{name}: test HR@10 {report['HR@10']:.4f} NDCG@10 {report['NDCG@10']:.4f} "
        f"(best epoch {log.best_epoch}, {log.seconds:.0f}s) -> {folder}"
    )
    return report
