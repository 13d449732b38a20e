"""The tuned model's learning curve: the default recipe (`make tune`) at several sizes of the
instruction set (the profile's user draws times 0.5, 1, 2, 4: more users' prefixes, honest hints as
always), each tuned, exported and validated as `make tune` does. Per size, on the validation users:
each task's NDCG@3 reranking LightGCN's top-10 (the serving-task validation), and what the task
scores add to the learned ranker (held-out NDCG@3 of LambdaRank with the task utilities minus
without, paired per user). Nothing here reads a test user.

Stop rule (README): if the curve is flat from 1x to 4x, the tuned model's ranking tasks stay out of
the default policy on CPU.
-> reports/learning-curve-<dataset>.{json,md,png}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from service.llm.hardware import machine_description
from service.ranking.fusion import feature_matrix
from training.data import leave_one_out, load_dataset, require_held_out_users
from training.evaluation.engine_runs import (
    FEATURE_BACKBONES,
    EvalRequest,
    engine_cache_dir,
    relevant_index,
    sample_users,
    stage_cache_name,
    stage_records,
    utilities_of,
)
from training.evaluation.fusion_selection import LearnedFusionConfig, UserGroup, cross_validate
from training.evaluation.serving_policy import feature_source, record_inputs, shuffled_utilities
from training.evaluation.workflow import run_tune
from training.paired_stats import paired_comparison
from training.paths import Paths
from training.tuning.pipeline import TuneRequest
from training.tuning.tune import PROFILES

console = Console(soft_wrap=True)
SCALES = (0.5, 1.0, 2.0, 4.0)
TASK_ROWS = ("backbone", "pointwise", "pairwise", "listwise", "hybrid")


def export_dir_for(paths: Paths, dataset: str, scale: float, profile: str = "cpu", seed: int | None = None) -> Path:
    """1x of the cpu profile at its own seed is the default model (`make tune`'s); other sizes and
    replicates (another seed) get folders of their own."""
    base = paths.artifacts / dataset / "model"
    if scale == 1.0 and profile == "cpu" and seed is None:
        return base
    return base.with_name(f"model-{profile}-draws-x{scale:g}" + (f"-seed{seed}" if seed is not None else ""))


SHUFFLED_ROW = "learned (task scores shuffled within each list)"


def llm_gain(paths: Paths, split, export_dir: Path, backbone: str, seed: int = 2024) -> dict:
    """Held-out NDCG@3 of the learned ranker with the task utilities, without them, and with them
    shuffled within each list (the control), on the serving-task validation's users (its cached
    engine outputs), and the paired differences of the first to the other two."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    req = EvalRequest(dataset=split.dataset.name, valid_users=manifest["profile"].get("serving_validation_users", 0))
    users = sample_users(split, req.valid_users, req.seed + 1)
    cache = engine_cache_dir(paths, split.dataset.name, manifest["run_key"]) / stage_cache_name(backbone, "valid", req.ms[0], len(users), req.seed, req.score_every_user)
    records = stage_records(cache, None)
    source = feature_source(paths, split, tuple(dict.fromkeys((*FEATURE_BACKBONES, backbone))))
    inputs = [record_inputs(source, split, r, backbone) for r in records]
    config = LearnedFusionConfig(guard=False, guard_k=3, seed=seed)
    rng = np.random.default_rng(seed)
    task_scores = {"learned_no_llm": [None] * len(records), "learned": [utilities_of(r) for r in records],
                   "learned_shuffled": [shuffled_utilities(r, rng) for r in records]}
    held_out = {}
    for name, utilities in task_scores.items():
        groups = [UserGroup.with_relevant(feature_matrix(r.m, u, backbone_scores=x.backbone_scores, extra=x.extra), relevant_index(r))
                  for r, u, x in zip(records, utilities, inputs, strict=True)]
        held_out[name] = cross_validate(groups, config, folds=5, k=3)[1]["learned"]
    return {name: float(v.mean()) for name, v in held_out.items()} | {
        "diff": paired_comparison(held_out["learned"], held_out["learned_no_llm"], n_boot=1000, seed=seed),
        "diff_vs_shuffled": paired_comparison(held_out["learned"], held_out["learned_shuffled"], n_boot=1000, seed=seed)}


def size_fields(manifest: dict, scale: float, minutes: float, seed: int) -> dict:
    """What every row of one tuning run (a size at a seed) says about it, read from the export's manifest."""
    train = manifest["instructions"]["train"]
    return {"scale": scale, "seed": seed, "examples": train["examples"], "instruction_users": train["users"], "per_task": train["per_task"],
            "steps": manifest.get("train_log", {}).get("steps"), "tune_minutes": round(minutes, 1),
            "lora_minutes": round(manifest.get("tune_seconds", 0) / 60, 1), "machine": manifest.get("machine") or machine_description(),
            "model_run_key": manifest["run_key"], "users": manifest["serving_validation"]["users"]}


def task_rows(manifest: dict, common: dict) -> list[dict]:
    """One row per task of the export's serving-task validation (the hybrid's with its paired difference to the backbone)."""
    sv = manifest["serving_validation"]
    return [common | {"task": task, "valid_ndcg3": sv["NDCG@3"][task]} | ({"hybrid_vs_backbone": sv["hybrid_vs_backbone"]} if task == "hybrid" else {})
            for task in TASK_ROWS if task in sv["NDCG@3"]]


def curve_rows(paths: Paths, split, scale: float, seed: int, export_dir: Path, minutes: float, backbone: str) -> list[dict]:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    common = size_fields(manifest, scale, minutes, seed)
    rows = task_rows(manifest, common)
    gain = llm_gain(paths, split, export_dir, backbone)
    rows.append(common | {"task": "learned_no_llm", "valid_ndcg3": gain["learned_no_llm"]})
    rows.append(common | {"task": SHUFFLED_ROW, "valid_ndcg3": gain["learned_shuffled"]})
    rows.append(common | {"task": "learned (with the task scores)", "valid_ndcg3": gain["learned"], "vs_learned_no_llm": gain["diff"],
                          "vs_shuffled": gain["diff_vs_shuffled"]})
    return rows


def runs_of(report: dict) -> dict[tuple[float, int | None], dict[str, dict]]:
    """{(size, seed): {task: row}}, sizes ascending, the recipe's own seed first within a size."""
    recipe = report.get("recipe_seed")
    runs: dict[tuple[float, int | None], dict[str, dict]] = {}
    for r in sorted(report["rows"], key=lambda r: (r["scale"], r.get("seed") != recipe, r.get("seed") or 0)):
        runs.setdefault((r["scale"], r.get("seed")), {})[r["task"]] = r
    return runs


def recipe_rows(report: dict) -> list[dict]:
    """The curve proper: the runs at the recipe's own seed (replicates only say how noisy it is)."""
    return [r for r in report["rows"] if r.get("seed") == report.get("recipe_seed")]


def replicate_spread(report: dict) -> list[str]:
    """Per size tuned at more than one seed: how far its runs lie apart, the yardstick for the curve's steps."""
    lines = []
    by_size: dict[float, list[dict[str, dict]]] = {}
    for (scale, _), rows in runs_of(report).items():
        by_size.setdefault(scale, []).append(rows)
    for scale, runs in by_size.items():
        if len(runs) < 2:
            continue
        seeds = ", ".join(str(next(iter(r.values())).get("seed")) for r in runs)
        parts = []
        for task in ("hybrid", "learned (with the task scores)"):
            values = [r[task]["vs_learned_no_llm"]["diff"] if task.startswith("learned") else r[task]["valid_ndcg3"] for r in runs if task in r]
            if len(values) > 1:
                what = "what the task scores add to the learned ranker" if task.startswith("learned") else "the hybrid's NDCG@3"
                parts.append(f"{what} by {max(values) - min(values):.4f}")
        lines.append(f"At {scale:g}x, {len(runs)} tuning runs of the same recipe (seeds {seeds}) differ in " + " and in ".join(parts)
                     + ": steps of the curve smaller than that are within run-to-run noise.")
    return lines


def markdown(report: dict) -> str:
    lines = [f"# Learning curve of the tuned model ({report['dataset']})", "",
             f"The default recipe at {', '.join(f'{s:g}x' for s in report['scales'])} the instruction examples; validation users only "
             f"(NDCG@3 of LightGCN's top-10 reranked; the learned rows held out by 5-fold user-split cross-validation). "
             f"Machine: {report['machine']}.", "",
             "| size | examples | LoRA steps | tune min | " + " | ".join(TASK_ROWS)
             + " | learned_no_llm | learned, task scores shuffled (control) | learned with task scores (vs learned_no_llm [95% CI]) | vs the control [95% CI] |",
             "|---|---:|---:|---:|" + "---:|" * (len(TASK_ROWS) + 4)]
    for (scale, seed), rows in runs_of(report).items():
        any_row = next(iter(rows.values()))
        learned = rows.get("learned (with the task scores)")
        d = learned["vs_learned_no_llm"] if learned else None
        gain = f"{learned['valid_ndcg3']:.4f} ({d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])" if learned else "—"
        c = (learned or {}).get("vs_shuffled")
        vs_control = f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c else "—"
        control = f"{rows[SHUFFLED_ROW]['valid_ndcg3']:.4f}" if SHUFFLED_ROW in rows else "—"
        size = f"{scale:g}x" + ("" if seed == report.get("recipe_seed") else f" (seed {seed})")
        lines.append(f"| {size} | {any_row['examples']} | {any_row['steps']} | {any_row['tune_minutes']} | "
                     + " | ".join(f"{rows[t]['valid_ndcg3']:.4f}" if t in rows else "—" for t in TASK_ROWS)
                     + f" | {rows['learned_no_llm']['valid_ndcg3']:.4f} | {control} | {gain} | {vs_control} |")
    lines += ["", *replicate_spread(report), "", report.get("verdict", ""), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    curve, replicates = recipe_rows(report), [r for r in report["rows"] if r.get("seed") != report.get("recipe_seed")]
    for task in (*TASK_ROWS, "learned_no_llm", SHUFFLED_ROW, "learned (with the task scores)"):
        pts = sorted((r["examples"], r["valid_ndcg3"]) for r in curve if r["task"] == task)
        if pts:
            style = "--" if task in ("backbone", "learned_no_llm") else ":" if task == SHUFFLED_ROW else "-"
            (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=task, ls=style)
            again = [(r["examples"], r["valid_ndcg3"]) for r in replicates if r["task"] == task]
            if again:  # other seeds of a size: hollow markers, no line
                ax.scatter(*zip(*again, strict=True), facecolors="none", edgecolors=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("instruction examples (log)")
    ax.set_ylabel("validation NDCG@3")
    ax.set_title(f"learning curve, {report['dataset']} (LightGCN top-10)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict(report: dict) -> str:
    """Flat from 1x to the largest size: no task and not the learned gain moved beyond its noise
    (judged on the recipe's own seed; replicates at other seeds are reported beside it)."""
    by = {(r["scale"], r["task"]): r for r in recipe_rows(report)}
    top = max(report["scales"])
    if 1.0 not in report["scales"] or top <= 1.0:
        return "The curve has no size above 1x yet: no verdict."
    gain_1, gain_top = by.get((1.0, "learned (with the task scores)")), by.get((top, "learned (with the task scores)"))
    hybrid_top = by.get((top, "hybrid"))
    moved = []
    control_top = (gain_top or {}).get("vs_shuffled")
    if gain_top and gain_top["vs_learned_no_llm"]["ci_low"] > 0 and (control_top is None or control_top["ci_low"] > 0):
        moved.append(f"at {top:g}x the task scores add {gain_top['vs_learned_no_llm']['diff']:+.4f} to the learned ranker with the interval above 0"
                     + (f", and {control_top['diff']:+.4f} over the same scores shuffled within each list, also above 0" if control_top else ""))
    if hybrid_top and hybrid_top["hybrid_vs_backbone"]["ci_low"] > 0:
        moved.append(f"the hybrid beats the backbone at {top:g}x with the interval above 0")
    if moved:
        return "Not flat: " + "; ".join(moved) + "."
    def said(row: dict | None, key: str) -> str:
        c = (row or {}).get(key)
        return f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c else "?"

    if control_top is not None:
        what = (f"over the same scores shuffled within each list (the control) the task scores add {said(gain_1, 'vs_shuffled')} to the learned "
                f"ranker at 1x and {said(gain_top, 'vs_shuffled')} at {top:g}x (over learned_no_llm {said(gain_1, 'vs_learned_no_llm')} and "
                f"{said(gain_top, 'vs_learned_no_llm')}), no gain above both 0 and its control")
    else:
        what = (f"what the task scores add to the learned ranker goes from {said(gain_1, 'vs_learned_no_llm')} to "
                f"{said(gain_top, 'vs_learned_no_llm')}, neither interval above 0")
    return (f"Flat from 1x to {top:g}x on the validation users: {what}, and the hybrid not above the backbone. "
            "By the stop rule the tuned model's ranking tasks stay out of the default policy on CPU.")


def run(paths: Paths, dataset_name: str, data_path: Path | None, scales: Sequence[float], backbone: str = "lightgcn",
        reports_dir: Path = Path("reports"), profile: str = "cpu", seed: int | None = None) -> list[Path]:
    """Tune, validate and report each size in turn; `seed` (other than the profile's) makes the runs replicates."""
    dataset = load_dataset(dataset_name, data_path, cache_dir=paths.cache)
    split = require_held_out_users(leave_one_out(dataset), data_path or dataset_name)
    out_json = reports_dir / f"learning-curve-{dataset.name}.json"
    report = json.loads(out_json.read_text()) if out_json.is_file() else {"dataset": dataset.name, "rows": []}
    report["recipe_seed"] = PROFILES[profile].seed
    run_seed = PROFILES[profile].seed if seed is None else seed
    for scale in scales:
        export_dir = export_dir_for(paths, dataset.name, scale, profile, None if run_seed == report["recipe_seed"] else run_seed)
        console.print(f"[bold]learning curve[/bold]: {scale:g}x the draws, seed {run_seed} -> {export_dir}")
        earlier = next((r for r in report["rows"] if (r["scale"], r.get("seed")) == (scale, run_seed)), None)
        tuned_before = earlier is not None and (export_dir / "manifest.json").is_file()
        start = time.perf_counter()
        run_tune(replace(TuneRequest(dataset=dataset_name, data_path=data_path, backbone=backbone, profile=profile), draws_scale=scale, seed=seed, export_dir=export_dir), paths)
        minutes = earlier["tune_minutes"] if tuned_before else (time.perf_counter() - start) / 60  # a rerun only re-reads the export
        report["rows"] = [r for r in report["rows"] if (r["scale"], r.get("seed")) != (scale, run_seed)] + curve_rows(paths, split, scale, run_seed, export_dir, minutes, backbone)
        report["scales"] = sorted({r["scale"] for r in report["rows"]})
        report["machine"] = machine_description()
        report["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        report["verdict"] = verdict(report)
        reports_dir.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=1))  # after every size: a long run shows its progress
        out_json.with_suffix(".md").write_text(markdown(report))
        plot(report, out_json.with_suffix(".png"))
        console.print(out_json.with_suffix(".md").read_text())
    return [out_json, out_json.with_suffix(".md"), out_json.with_suffix(".png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.learning_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-path", type=Path)
    parser.add_argument("--scales", nargs="+", type=float, default=list(SCALES))
    parser.add_argument("--profile", default="cpu", help="the tuning profile whose draws are scaled (cpu, gpu)")
    parser.add_argument("--seed", type=int, help="tune with this seed instead of the profile's: replicates that measure run-to-run noise")
    args = parser.parse_args(argv)
    run(Paths.from_env(), args.dataset, args.data_path, args.scales, profile=args.profile, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
