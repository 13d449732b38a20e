"""The backbone table accumulates: every backbone exported for the data split, whichever run trained it."""

from __future__ import annotations

import json

from training.__main__ import metrics_table_markdown, trained_backbones
from training.paths import Paths

METRICS = {"HR@3": 0.1, "NDCG@3": 0.05, "HR@5": 0.2, "NDCG@5": 0.07, "HR@10": 0.3, "NDCG@10": 0.09}


def export(paths: Paths, name: str, fingerprint: str, ndcg10: float, **extra) -> None:
    folder = paths.backbone_dir("ds", name)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(METRICS | {"NDCG@10": ndcg10, "data_fingerprint": fingerprint, **extra}))


def test_the_table_lists_every_backbone_of_the_split_best_first_with_its_run(tmp_path):
    paths = Paths(cache=tmp_path / "c", artifacts=tmp_path / "a")
    export(paths, "mf", "split-1", 0.09, trained_at="2026-12-07T16:00:00+00:00", machine="2-core AMD EPYC, avx2")
    export(paths, "sasrec", "split-1", 0.11)  # exported before runs recorded their date and machine
    export(paths, "lightgcn", "another-split", 0.10)
    reports = trained_backbones(paths, "ds", "split-1")
    assert sorted(reports) == ["mf", "sasrec"]
    rows = [line for line in metrics_table_markdown("ds", reports).splitlines() if line.startswith("| ") and "backbone" not in line]
    assert rows[0].startswith("| sasrec |") and rows[0].endswith("| — | — |")
    assert rows[1].startswith("| mf |") and rows[1].endswith("| 2026-12-07T16:00:00+00:00 | 2-core AMD EPYC, avx2 |")
