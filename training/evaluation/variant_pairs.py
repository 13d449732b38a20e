"""Tuning variants paired on the same validation users: what chooses between them.

Each variant's serving-task validation (`training.evaluation.engine_runs.serving_validation`) left its engine
outputs in `artifacts/<dataset>/eval/<run key>/`. Two variants validated on the same users and
the same backbone candidate lists are compared user by user: the paired NDCG@3 difference of the
hybrid and of each task, with the report's bootstrap interval and t-test (`paired_comparison`).
That is the test "the real item vectors do clearly better than shuffled ones" needs; the validation
means alone cannot say whether a difference is noise.

Pairs: every variant against the default, and a `_shuffled` ablation's real counterpart against it.
A pair is computed only when both caches are on this machine and hold the same users and
candidates; pairs measured earlier (other sessions) are kept in the quality report as they were.

`.venv/bin/python -m training.evaluation.variant_pairs` recomputes them from what is here and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.evaluation.engine_runs import (
    TASK_METHODS,
    EvalRequest,
    Record,
    engine_cache_dir,
    serving_ranks,
    stage_cache_name,
    stage_records,
)
from training.evaluation.quality_report import pairs_markdown, write_quality_report
from training.evaluation.quality_report import update_quality_report as _update_rows
from training.metrics import ndcg_gains
from training.paired_stats import paired_comparison
from training.paths import Paths

PAIR_METHODS = ("hybrid", *TASK_METHODS)


def variant_pairs(variants: dict[str, dict], default: str) -> list[tuple[str, str]]:
    """(variant, reference): each variant against the default, and each ablation's real counterpart
    against the ablation."""
    pairs = [(v, default) for v in sorted(variants) if v != default and default in variants]
    pairs += [(v.removesuffix("_shuffled"), v) for v in sorted(variants) if v.endswith("_shuffled") and v.removesuffix("_shuffled") in variants]
    return pairs


def validation_records(paths: Paths, dataset: str, variant_entry: dict, req: EvalRequest = EvalRequest()) -> list[Record] | None:
    """A variant's serving-validation engine outputs on this machine, by user, or None."""
    sv, run_key = variant_entry.get("serving_validation"), variant_entry.get("model_run_key")
    if not sv or not run_key:
        return None
    cache = engine_cache_dir(paths, dataset, run_key) / stage_cache_name(sv["backbone"], "valid", sv["m"], sv["users"], req.seed, req.score_every_user)
    if not cache.is_file():
        return None
    return sorted(stage_records(cache, None), key=lambda r: r.user)


def compare_records(a: list[Record], b: list[Record], n_boot: int = 2000, seed: int = 2024) -> dict[str, dict] | None:
    """NDCG@3 of `a` minus `b`, per method, paired by user; None when they are not the same users
    with the same candidates (then nothing is paired)."""
    if [(r.user, r.items, r.target) for r in a] != [(r.user, r.items, r.target) for r in b]:
        return None
    ranks_a, ranks_b = serving_ranks(a), serving_ranks(b)
    return {method: paired_comparison(ndcg_gains(ranks_a[method], 3), ndcg_gains(ranks_b[method], 3), n_boot=n_boot, seed=seed)
            for method in PAIR_METHODS}


def update_validation_pairs(quality: dict, paths: Paths) -> dict:
    """The quality report's `validation_pairs`, recomputed where both caches are here, others kept."""
    variants = quality.get("variants", {})
    # a pair measured on models that have since been re-tuned no longer says anything
    pairs = {k: p for k, p in quality.get("validation_pairs", {}).items()
             if p.get("run_keys") == [variants.get(v, {}).get("model_run_key") for v in (p["variant"], p["reference"])]}
    records = {}
    for variant, reference in variant_pairs(quality.get("variants", {}), quality.get("default", "")):
        for v in (variant, reference):
            if v not in records:
                records[v] = validation_records(paths, quality["dataset"], quality["variants"][v])
        if records[variant] is None or records[reference] is None:
            continue
        result = compare_records(records[variant], records[reference])
        if result is not None:
            tuned_on = {quality["variants"][v].get("tuned_on", "unknown") for v in (variant, reference)}
            pairs[f"{variant} vs {reference}"] = {"variant": variant, "reference": reference, "users": len(records[variant]),
                                                  "run_keys": [quality["variants"][v]["model_run_key"] for v in (variant, reference)],
                                                  "tuned_on": sorted(tuned_on), "ndcg3": result}
    return pairs


def update_quality_report(folder: Path, dataset: str, manifest: dict, reports: dict[str, dict], paths: Paths | None = None) -> list[Path]:
    """`training.evaluation.quality_report.update_quality_report`, and with `paths` the variants paired on the
    validation users whose engine outputs are on this machine."""
    return _update_rows(folder, dataset, manifest, reports, (lambda q: update_validation_pairs(q, paths)) if paths is not None else None)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    path = args.reports / f"quality-{args.dataset}.json"
    if not path.is_file():
        print(f"error: {path}: no quality report yet; run `make eval` or `make variants` first")
        return 2
    quality = json.loads(path.read_text())
    quality["validation_pairs"] = update_validation_pairs(quality, Paths.from_env())
    write_quality_report(args.reports, args.dataset, quality)
    print("\n".join(pairs_markdown(quality["validation_pairs"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
