"""reports/quality-<dataset>.*: variants side by side, one evaluation replacing only its own rows."""

from __future__ import annotations

import json

from training.evaluation.quality_report import VARIANTS, default_variant, update_quality_report, variant_of

RELIABILITY = {w: {"pairwise_accuracy": 0.6, "listwise_hits_at_5": 0.65, "pairs": 10, "lists": 5} for w in ("instructions", "validation", "validation_stage", "test")}


def manifest(hints="honest", pointwise_hint=True, key="k1"):
    return {"run_key": key, "hints": hints, "pointwise_hint": pointwise_hint, "machine": "2-core test CPU", "profile": {"name": "cpu"}, "hint_reliability": RELIABILITY}


def eval_report(ndcg: dict[str, float], users=942):
    rows = [{"method": k, "m": 10, "subset": s, "users": users, "NDCG@3": v, "HR@3": v * 1.2} for k, v in ndcg.items() for s in ("all", "hit")]
    paired = [{"method": k, "m": 10, "metric": "NDCG@3", "vs": ref, "diff": v - ndcg[ref], "ci_low": v - ndcg[ref] - 0.01, "ci_high": v - ndcg[ref] + 0.01, "p_value": 0.5, "mde": 0.02}
              for ref in ("backbone", "learned_no_llm") if ref in ndcg for k, v in ndcg.items() if k != ref]
    return {"rows": rows, "paired": paired, "users": {"test": users, "valid": users},
            "validation": {"m10": {k: {"NDCG@3": v, "HR@3": v} for k, v in ndcg.items() if k != "learned"}},
            "cv": {"learned_m10": {"uses_llm_features": False}, "learned_no_llm_m10": {}}}


def test_variants_are_named_from_the_manifest():
    assert variant_of(manifest("paper")) == "paper_hints"
    assert variant_of(manifest("honest")) == "honest_hints"
    assert variant_of(manifest("honest", pointwise_hint=False)) == "honest_hints_no_pointwise_hint"
    assert variant_of({}) == "paper_hints"  # manifests from before honest hints


def test_rows_carry_the_paired_difference_to_the_backbone_and_to_learned_no_llm(tmp_path):
    scores = {"backbone": 0.10, "hybrid": 0.11, "learned_no_llm": 0.12, "learned": 0.125}
    default = VARIANTS[default_variant()]
    update_quality_report(tmp_path, "ml-100k", manifest(default["hints"], default["pointwise_hint"]), {"lightgcn": eval_report(scores)})
    q = json.loads((tmp_path / "quality-ml-100k.json").read_text())
    assert q["users"] == {"test": 942, "valid": 942} and q["default"] == default_variant()
    assert set(q["hint_reliability"]) >= {"instructions", "validation", "test"}
    rows = {r["method"]: r for r in q["rows"]}
    assert set(rows) == set(scores)  # the "hit" subset rows are not repeated
    learned = rows["learned"]
    assert learned["diff_vs_backbone"] == 0.125 - 0.10 and learned["ci_low"] < learned["diff_vs_backbone"] < learned["ci_high"]
    assert abs(learned["diff_vs_learned_no_llm"] - 0.005) < 1e-12
    assert rows["backbone"]["diff_vs_backbone"] == 0.0
    for key in ("variant", "backbone", "m", "method", "NDCG@3", "HR@3", "diff_vs_backbone", "ci_low", "ci_high", "p_value"):
        assert key in learned
    assert (tmp_path / "quality-ml-100k.md").read_text().count(f"| {default_variant()} | lightgcn | 10 |") == len(scores)
    assert (tmp_path / "quality-ml-100k.png").stat().st_size > 0


def test_a_second_evaluation_replaces_its_own_variant_and_keeps_the_others(tmp_path):
    first = {"backbone": 0.10, "hybrid": 0.09}
    update_quality_report(tmp_path, "ml-100k", manifest("paper"), {"lightgcn": eval_report(first)})
    update_quality_report(tmp_path, "ml-100k", manifest("honest"), {"lightgcn": eval_report(first)})
    update_quality_report(tmp_path, "ml-100k", manifest("honest", key="k2"), {"lightgcn": eval_report({"backbone": 0.10, "hybrid": 0.12})})
    q = json.loads((tmp_path / "quality-ml-100k.json").read_text())
    per_variant = {(r["variant"], r["method"]): r["NDCG@3"] for r in q["rows"]}
    assert per_variant == {("paper_hints", "backbone"): 0.10, ("paper_hints", "hybrid"): 0.09, ("honest_hints", "backbone"): 0.10, ("honest_hints", "hybrid"): 0.12}
    assert q["variants"]["honest_hints"]["model_run_key"] == "k2" and q["variants"]["paper_hints"]["tuned_on"] == "2-core test CPU"


def test_each_variants_tuning_request_is_named_back_as_that_variant_and_only_the_default_is_make_tunes_model(tmp_path):
    from dataclasses import asdict, replace

    from training.evaluation.quality_report import variant_export_dir
    from training.tuning.pipeline import TuneRequest

    for name, fields in VARIANTS.items():
        assert variant_of(asdict(replace(TuneRequest(), **fields))) == name
    assert variant_export_dir(tmp_path, "ml-100k", default_variant()) == tmp_path / "ml-100k" / "model"
    assert {variant_export_dir(tmp_path, "ml-100k", v) for v in VARIANTS} == {tmp_path / "ml-100k" / "model", *(tmp_path / "ml-100k" / f"model-{v}" for v in VARIANTS if v != default_variant())}
