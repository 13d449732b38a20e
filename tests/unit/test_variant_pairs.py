"""Tuning variants compared user by user on the validation users (training.evaluation.variant_pairs): the test
that says whether real item vectors do better than shuffled ones, with an interval."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tests.unit.test_quality_report import eval_report, manifest
from training.evaluation.engine_runs import EvalRequest, Record, engine_cache_dir, stage_cache_name
from training.evaluation.quality_report import default_variant
from training.evaluation.variant_pairs import compare_records, update_quality_report, variant_pairs
from training.paths import Paths

M = 4


def record(user: int, target_first: bool, target: int = 7) -> Record:
    """A user whose target is the last backbone candidate; the tasks put it first or leave it last."""
    utility = [0.0, 0.1, 0.2, 0.9] if target_first else [0.9, 0.8, 0.7, 0.0]
    return Record(user=user, stage="valid", m=M, items=[1, 2, 3, target], target=target,
                  utilities={t: utility for t in ("pointwise", "pairwise", "listwise")}, invalid={}, dropped={}, seconds=0.0)


def test_each_variant_is_paired_with_the_default_and_an_ablation_with_its_real_counterpart():
    variants = {"honest_hints": {}, "item_tokens": {}, "item_tokens_shuffled": {}, "paper_hints": {}}
    assert variant_pairs(variants, "honest_hints") == [
        ("item_tokens", "honest_hints"), ("item_tokens_shuffled", "honest_hints"), ("paper_hints", "honest_hints"),
        ("item_tokens", "item_tokens_shuffled")]


def test_the_difference_is_paired_by_user_and_signed_variant_minus_reference():
    better = [record(u, target_first=True) for u in range(30)]
    worse = [record(u, target_first=u % 2 == 0) for u in range(30)]
    result = compare_records(better, worse)
    assert result["hybrid"]["users"] == 30
    assert result["hybrid"]["diff"] > 0 and result["hybrid"]["ci_low"] > 0
    assert compare_records(better, better)["hybrid"]["diff"] == 0.0


def test_records_of_other_users_or_other_candidates_are_not_paired():
    a = [record(u, True) for u in range(5)]
    assert compare_records(a, [record(u, True) for u in range(1, 6)]) is None
    assert compare_records(a, [record(u, True, target=8) for u in range(5)]) is None


def write_validation_cache(paths: Paths, run_key: str, records: list[Record]) -> None:
    req = EvalRequest()
    name = stage_cache_name("lightgcn", "valid", M, len(records), req.seed, req.score_every_user)
    (engine_cache_dir(paths, "ml-100k", run_key) / name).write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))


def test_the_quality_report_pairs_the_variants_whose_validation_outputs_are_here(tmp_path: Path):
    paths = Paths(cache=tmp_path / "cache", artifacts=tmp_path / "artifacts")
    users = 20
    validation = {"backbone": "lightgcn", "m": M, "users": users}
    default = dict(manifest(key="d"), serving_validation=validation)
    tokens = dict(manifest(key="t"), item_tokens="beside", item_vectors="real", serving_validation=validation)
    shuffled = dict(manifest(key="s"), item_tokens="beside", item_vectors="shuffled", serving_validation=validation)
    write_validation_cache(paths, "d", [record(u, u % 2 == 0) for u in range(users)])
    write_validation_cache(paths, "t", [record(u, True) for u in range(users)])
    # the shuffled variant's outputs are not on this machine: no pair with it is made up
    reports = tmp_path / "reports"
    for m in (default, tokens, shuffled):
        update_quality_report(reports, "ml-100k", m, {"lightgcn": eval_report({"backbone": 0.1, "hybrid": 0.1})}, paths)
    q = json.loads((reports / "quality-ml-100k.json").read_text())
    assert default_variant() == "honest_hints"
    assert set(q["validation_pairs"]) == {"item_tokens vs honest_hints"}
    pair = q["validation_pairs"]["item_tokens vs honest_hints"]
    assert pair["users"] == users and pair["ndcg3"]["hybrid"]["diff"] > 0
    assert "| item_tokens | honest_hints | hybrid |" in (reports / "quality-ml-100k.md").read_text()


def test_a_pair_is_dropped_once_one_of_its_models_is_tuned_again(tmp_path: Path):
    paths = Paths(cache=tmp_path / "cache", artifacts=tmp_path / "artifacts")
    validation = {"backbone": "lightgcn", "m": M, "users": 10}
    write_validation_cache(paths, "d", [record(u, False) for u in range(10)])
    write_validation_cache(paths, "t", [record(u, True) for u in range(10)])
    reports = tmp_path / "reports"
    scores = {"lightgcn": eval_report({"backbone": 0.1, "hybrid": 0.1})}
    update_quality_report(reports, "ml-100k", dict(manifest(key="d"), serving_validation=validation), scores, paths)
    update_quality_report(reports, "ml-100k", dict(manifest(key="t"), item_tokens="beside", serving_validation=validation), scores, paths)
    assert "item_tokens vs honest_hints" in json.loads((reports / "quality-ml-100k.json").read_text())["validation_pairs"]
    # the default tuned again elsewhere: its outputs are not here, and the old pair is not kept
    update_quality_report(reports, "ml-100k", dict(manifest(key="d2"), serving_validation=validation), scores, paths)
    assert json.loads((reports / "quality-ml-100k.json").read_text())["validation_pairs"] == {}
