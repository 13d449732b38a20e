"""Ablations of the instruction tuning (PAPER.md): adaptive vs uniform sampling, without prompt
enhancement (backbone hints), without position shifting. Each variant is one tuning run of the
same profile; the report compares their answers on the same held-out validation users (candidate
order shuffled, so a model that learned a position bias cannot look good)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from training.evaluation.workflow import run_tune
from training.paths import Paths
from training.tuning.pipeline import TuneRequest

VARIANTS: dict[str, dict] = {
    "full": {},
    "uniform_sampling": {"sampling": "uniform"},
    "no_enhancement": {"enhancement": False},
    "no_position_shift": {"position_shift": False},
}
METRICS = ("answer_loss", "pointwise_mae", "pairwise_accuracy", "listwise_hits_at_5")


def run_ablation(base: TuneRequest, paths: Paths, variants: list[str] | None = None) -> dict[str, Path]:
    out = {}
    for name in variants or list(VARIANTS):
        req = replace(base, export_dir=paths.artifacts / base.dataset / "ablation" / name, **VARIANTS[name])
        out[name] = run_tune(req, paths) / "manifest.json"
    return out


def ablation_report(manifests: dict[str, Path]) -> dict:
    rows = []
    for name, path in manifests.items():
        m = json.loads(Path(path).read_text())
        v = m["validation"]
        rows.append({
            "variant": name, "sampling": m["sampling"], "enhancement": m["enhancement"], "position_shift": m["position_shift"],
            **{metric: round(v[metric]["tuned"], 4) for metric in METRICS},
            "base": {metric: round(v[metric]["base"], 4) for metric in METRICS},
            "invalid_listwise": v["invalid_answers"]["tuned"].get("listwise"),
            "tune_seconds": m["tune_seconds"], "steps": m["train_log"].get("steps"), "profile": m["profile"]["name"], "run_key": m["run_key"],
            "reference": v.get("reference"), "examples": v.get("examples"),
        })
    return {"rows": rows}


def ablation_markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", "", "| variant | answer loss | pointwise MAE | pairwise accuracy | listwise hits@5 | tuning s |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['variant']} | {r['answer_loss']:.3f} | {r['pointwise_mae']:.3f} | {r['pairwise_accuracy']:.3f} | {r['listwise_hits_at_5']:.3f} | {r['tune_seconds']:.0f} |")
    ref = report["rows"][0].get("reference") or {}
    if ref:
        lines += ["", "References on the same examples: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ref.items() if isinstance(v, int | float))]
    base = report["rows"][0]["base"]
    lines += ["", "Untuned base model: " + ", ".join(f"{k} {v:.3f}" for k, v in base.items())]
    return "\n".join(lines) + "\n"
