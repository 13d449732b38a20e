"""The scaling benchmark's report (training/backbones/scaling_bench.py), on sizes small enough for a unit test."""

from __future__ import annotations

import json

from training.backbones.scaling_bench import ROW_FIELDS, growth_exponent, main


def test_bench_writes_rows_for_every_backbone_and_size_and_the_machine(tmp_path, capsys):
    main(["--sizes", "2000", "4000", "--backbones", "pop", "mf", "--epochs-below", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert {(r["backbone"], r["interactions"]) for r in report["rows"]} == {(b, n) for b in ("pop", "mf") for n in (2000, 4000)}
    for row in report["rows"]:
        assert set(ROW_FIELDS) <= set(row)
        assert row["peak_rss_mb"] > 50
        # the training time covers every epoch and every validation check (each rounded in the row)
        assert row["train_seconds"] >= row["epochs"] * row["seconds_per_epoch"] + row["eval_seconds"] - 0.02, row
    mf = {r["interactions"]: r for r in report["rows"] if r["backbone"] == "mf"}
    assert mf[2000]["mode"] == "1 epochs" and mf[2000]["epochs"] == 1
    assert mf[4000]["mode"] == "early stopping"  # the largest size trains in full
    assert report["largest"] == {"interactions": 4000, "train_seconds_all": round(sum(r["train_seconds"] for r in report["rows"] if r["interactions"] == 4000), 1)}
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert "| mf | 4,000 |" in (tmp_path / "scaling.md").read_text()
    assert "[4/4] mf on 4,000 ratings" in capsys.readouterr().out  # progress while it runs


def test_growth_exponent_reads_linear_as_one_and_quadratic_as_two():
    linear = [{"backbone": "a", "interactions": n, "seconds_per_epoch": n / 1000} for n in (100, 200, 400)]
    square = [{"backbone": "b", "interactions": n, "seconds_per_epoch": (n / 100) ** 2} for n in (100, 200, 400)]
    assert growth_exponent(linear + square, "a") == 1.0
    assert growth_exponent(linear + square, "b") == 2.0
