"""reports/quality-<dataset>.{json,md,png}: the tuning variants' evaluations side by side.

Each `make eval` replaces the rows of the variant it evaluated (named from the model's manifest) and
keeps the others, so variants tuned in different runs, or on other machines, line up in one table.
`default` is the variant `make tune` ships (the tuning request's defaults). A row is one variant x
backbone x m x method on the test users, with its paired NDCG@3 difference to the backbone (and to
`learned_no_llm`): bootstrap interval, paired t-test p-value, minimal detectable effect. Validation
NDCG@3 (what chooses between variants) is kept per variant apart from the test rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

TARGET_GAIN = 0.10  # what we are after: +10% NDCG@3 over the backbone with the interval above 0


# The tuning request fields that make each variant (the rest are the request's defaults).
VARIANTS: dict[str, dict] = {
    "honest_hints": {"hints": "honest", "pointwise_hint": True},
    "paper_hints": {"hints": "paper", "pointwise_hint": True},
    "honest_hints_no_pointwise_hint": {"hints": "honest", "pointwise_hint": False},
    # Collaborative item tokens (training.tuning.item_tokens) on honest hints; "shuffled" is the ablation
    # that must do clearly worse on validation for the tokens to count.
    "item_tokens": {"hints": "honest", "pointwise_hint": True, "item_tokens": "beside", "item_vectors": "real"},
    "item_tokens_shuffled": {"hints": "honest", "pointwise_hint": True, "item_tokens": "beside", "item_vectors": "shuffled"},
    "item_tokens_only": {"hints": "honest", "pointwise_hint": True, "item_tokens": "only", "item_vectors": "real"},
}


def variant_export_dir(artifacts: Path, dataset: str, variant: str) -> Path:
    """The default variant is `make tune`'s model; the others sit beside it."""
    return artifacts / dataset / ("model" if variant == default_variant() else f"model-{variant}")


def variant_of(manifest: dict) -> str:
    if manifest.get("hints", "paper") == "paper":
        hints = "paper_hints"
    else:
        hints = "honest_hints" if manifest.get("pointwise_hint", True) else "honest_hints_no_pointwise_hint"
    tokens = manifest.get("item_tokens", "off")
    if tokens == "off":
        return hints
    name = "item_tokens" if tokens == "beside" else f"item_tokens_{tokens}"
    name += "_shuffled" if manifest.get("item_vectors") == "shuffled" else ""
    return name if hints == "honest_hints" else f"{hints}_{name}"


def default_variant() -> str:
    from training.tuning.pipeline import TuneRequest

    req = TuneRequest()
    return variant_of({"hints": req.hints, "pointwise_hint": req.pointwise_hint, "item_tokens": req.item_tokens, "item_vectors": req.item_vectors})


def quality_rows(variant: str, backbone: str, report: dict) -> list[dict]:
    paired = {(p["m"], p["method"], p["vs"]): p for p in report.get("paired", []) if p["metric"] == "NDCG@3"}
    rows = []
    for r in report["rows"]:
        if r["subset"] != "all":
            continue
        m, method = r["m"], r["method"]
        row = {"variant": variant, "backbone": backbone, "m": m, "method": method, "NDCG@3": r["NDCG@3"], "HR@3": r["HR@3"], "users": r["users"]}
        for ref, suffix in (("backbone", ""), ("learned_no_llm", "_vs_learned_no_llm")):
            p = paired.get((m, method, ref))
            if ref == "backbone":
                row.update({"diff_vs_backbone": p["diff"] if p else 0.0, "ci_low": p["ci_low"] if p else 0.0, "ci_high": p["ci_high"] if p else 0.0,
                            "p_value": p["p_value"] if p else 1.0, "mde": p["mde"] if p else 0.0})
            elif p:
                row.update({f"diff{suffix}": p["diff"], f"ci_low{suffix}": p["ci_low"], f"ci_high{suffix}": p["ci_high"], f"p_value{suffix}": p["p_value"]})
        rows.append(row)
    return rows


def _nan_to_none(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def update_quality_report(folder: Path, dataset: str, manifest: dict, reports: dict[str, dict],
                          pair_variants: Callable[[dict], dict] | None = None) -> list[Path]:
    """Replaces the evaluated variant's rows; with `pair_variants`, also pairs the variants on the
    validation users where their engine outputs are on this machine
    (`training.evaluation.variant_pairs.update_quality_report` passes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"quality-{dataset}.json"
    quality = json.loads(path.read_text()) if path.is_file() else {"dataset": dataset, "rows": [], "variants": {}}
    variant = variant_of(manifest)
    quality["rows"] = [r for r in quality["rows"] if r["variant"] != variant]
    for backbone, report in reports.items():
        quality["rows"] += quality_rows(variant, backbone, report)
    any_report = next(iter(reports.values()))
    quality["variants"][variant] = {
        "model_run_key": manifest.get("run_key"),
        "tuned_on": manifest.get("machine", "unknown"),
        "profile": manifest.get("profile", {}).get("name"),
        "hint_reliability": manifest.get("hint_reliability"),
        "validation_ndcg3": {b: {m: {k: v["NDCG@3"] for k, v in methods.items()} for m, methods in r["validation"].items()} for b, r in reports.items()},
        "learned_uses_llm": {b: {k: cv.get("uses_llm_features") for k, cv in r["cv"].items() if k.startswith("learned_m")} for b, r in reports.items()},
        "users": any_report["users"],
        "serving_validation": manifest.get("serving_validation"),
        # what /rerank serves by default for each backbone's lists (chosen on validation users)
        "policy": {b: {"method": r["policy"]["method"], "reasons": r["policy"]["reasons"],
                       "validation": {k: {"NDCG@3": v["NDCG@3"], **{x: v["vs_backbone"][x] for x in ("diff", "ci_low", "ci_high", "p_value")}}
                                      for k, v in r["policy"]["validation"].items()}}
                   for b, r in reports.items() if r.get("policy")},
    }
    quality["default"] = default_variant()
    quality["users"] = any_report["users"]
    quality["hint_reliability"] = _reliability_table(quality["variants"].get(quality["default"], {}).get("hint_reliability"))
    if pair_variants is not None:
        quality["validation_pairs"] = pair_variants(quality)
    return write_quality_report(folder, dataset, quality)


def write_quality_report(folder: Path, dataset: str, quality: dict) -> list[Path]:
    path = folder / f"quality-{dataset}.json"
    path.write_text(json.dumps(quality, indent=1, default=_nan_to_none))
    md = folder / f"quality-{dataset}.md"
    md.write_text(quality_markdown(quality))
    png = folder / f"quality-{dataset}.png"
    plot_quality(quality, png)
    return [path, md, png]


def _reliability_table(reliability: dict | None) -> dict | None:
    if not reliability:
        return None
    return {k: {"pairwise_accuracy": v["pairwise_accuracy"], "listwise_hits_at_5": v["listwise_hits_at_5"]} for k, v in reliability.items()}


def _target_verdict(gap: float, ci_low: float) -> str:
    if gap <= 0:
        return "met" if ci_low > 0 else f"{-gap:.4f} above it, but the interval's lower end {ci_low:+.4f} is not above 0"
    return f"{gap:.4f} short"


def pairs_markdown(pairs: dict) -> list[str]:
    if not pairs:
        return []
    lines = ["## Variants paired on the validation users (NDCG@3 of the serving task, LightGCN top-10)", "",
             "The variant minus its reference on the same users: difference, 95% bootstrap interval, paired t-test p.", "",
             "| variant | reference | method | diff | 95% interval | p |", "|---|---|---|---:|---|---:|"]
    for p in pairs.values():
        for method, c in p["ndcg3"].items():
            lines.append(f"| {p['variant']} | {p['reference']} | {method} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.3f} |")
    return [*lines, ""]


def served_markdown(q: dict) -> list[str]:
    """What /rerank serves by default (the default variant's serving policy) and how it does on the
    test users, beside the hybrid."""
    policy = q["variants"].get(q["default"], {}).get("policy") or {}
    if not policy:
        return []
    lines = ["## Served by default: the serving policy (chosen on validation users; docs/serving-policy.md)", "",
             "| backbone | served method | validation NDCG@3 vs backbone [95% CI] | test NDCG@3 | test vs backbone [95% CI] | p | hybrid test vs backbone [95% CI] |",
             "|---|---|---|---:|---|---:|---|"]
    for b, pol in sorted(policy.items()):
        rows = {r["method"]: r for r in q["rows"] if r["variant"] == q["default"] and r["backbone"] == b and r["m"] == 10}
        served = rows.get(pol["method"])
        v = pol["validation"].get(pol["method"], {})
        hybrid = rows.get("hybrid")
        if not served:
            continue
        lines.append(f"| {b} | {pol['method']} | {v.get('diff', 0.0):+.4f} [{v.get('ci_low', 0.0):+.4f}, {v.get('ci_high', 0.0):+.4f}] | {served['NDCG@3']:.4f} | "
                     f"{served['diff_vs_backbone']:+.4f} [{served['ci_low']:+.4f}, {served['ci_high']:+.4f}] | {served['p_value']:.3f} | "
                     + (f"{hybrid['diff_vs_backbone']:+.4f} [{hybrid['ci_low']:+.4f}, {hybrid['ci_high']:+.4f}] |" if hybrid else "- |"))
    return [*lines, ""]


def quality_markdown(q: dict) -> str:
    lines = [f"# Reranking quality on {q['dataset']}: variants side by side", "",
             f"Test users: {q['users']['test']}, validation users: {q['users']['valid']}. Default variant (`make tune`): `{q['default']}`.", ""]
    lines += served_markdown(q)
    lines += ["## Validation NDCG@3 (chooses the variant; test users choose nothing)", "", "| variant | tuned on | backbone | m | backbone | hybrid | pointwise | pairwise | listwise |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in sorted(q["variants"].items()):
        for b, per_m in v["validation_ndcg3"].items():
            for m, x in per_m.items():
                cells = " | ".join(f"{x[k]:.4f}" if k in x else "-" for k in ("backbone", "hybrid", "pointwise", "pairwise", "listwise"))
                lines.append(f"| {name} | {v['tuned_on']} ({v['profile']}) | {b} | {m[1:]} | {cells} |")
    lines += ["", *pairs_markdown(q.get("validation_pairs", {}))]
    lines += ["## Hint reliability (following the hint alone)", "", "| variant | set | pairwise accuracy | listwise hits@5 |", "|---|---|---:|---:|"]
    for name, v in sorted(q["variants"].items()):
        for where, x in (v.get("hint_reliability") or {}).items():
            lines.append(f"| {name} | {where} | {x['pairwise_accuracy']:.3f} | {x['listwise_hits_at_5']:.3f} |")
    lines += ["", "## Test users: NDCG@3, paired difference to the backbone and to learned_no_llm", "",
              "| variant | backbone | m | method | NDCG@3 | HR@3 | vs backbone [95% CI] | p | vs learned_no_llm [95% CI] | p |", "|---|---|---:|---|---:|---:|---|---:|---|---:|"]
    for r in sorted(q["rows"], key=lambda r: (r["variant"], r["backbone"], r["m"])):
        vs_nl = (f"{r['diff_vs_learned_no_llm']:+.4f} [{r['ci_low_vs_learned_no_llm']:+.4f}, {r['ci_high_vs_learned_no_llm']:+.4f}] | {r['p_value_vs_learned_no_llm']:.3f}"
                 if "diff_vs_learned_no_llm" in r else "- | -")
        lines.append(f"| {r['variant']} | {r['backbone']} | {r['m']} | {r['method']} | {r['NDCG@3']:.4f} | {r['HR@3']:.4f} | "
                     f"{r['diff_vs_backbone']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3f} | {vs_nl} |")
    lines += ["", f"Target beyond the current issue: hybrid or learned NDCG@3 at least {TARGET_GAIN:.0%} above the backbone with the interval's lower end above 0.", ""]
    for r in q["rows"]:
        if r["variant"] == q["default"] and r["method"] in ("hybrid", "learned"):
            base = next(x["NDCG@3"] for x in q["rows"] if x["variant"] == r["variant"] and x["backbone"] == r["backbone"] and x["m"] == r["m"] and x["method"] == "backbone")
            gap = (1 + TARGET_GAIN) * base - r["NDCG@3"]
            lines.append(f"- {r['backbone']} m={r['m']} {r['method']}: {r['NDCG@3']:.4f} vs target {(1 + TARGET_GAIN) * base:.4f} ({_target_verdict(gap, r['ci_low'])}); MDE at 80% power {r['mde']:.4f}")
    return "\n".join(lines) + "\n"


def plot_quality(q: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["backbone"], r["m"]) for r in q["rows"]})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(7 * max(1, len(panels)), 4.5), squeeze=False)
    variants = sorted({r["variant"] for r in q["rows"]})
    for ax, (backbone, m) in zip(axes[0], panels):
        methods = [r["method"] for r in q["rows"] if r["backbone"] == backbone and r["m"] == m and r["variant"] == variants[0] and r["method"] != "backbone"]
        width = 0.8 / max(1, len(variants))
        for j, v in enumerate(variants):
            rows = {r["method"]: r for r in q["rows"] if r["backbone"] == backbone and r["m"] == m and r["variant"] == v}
            xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(methods))]
            d = [rows[k]["diff_vs_backbone"] if k in rows else 0 for k in methods]
            err = [[rows[k]["diff_vs_backbone"] - rows[k]["ci_low"] if k in rows else 0 for k in methods], [rows[k]["ci_high"] - rows[k]["diff_vs_backbone"] if k in rows else 0 for k in methods]]
            ax.bar(xs, d, width, yerr=err, capsize=3, label=v)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_ylabel("NDCG@3 - backbone (95% CI)")
        ax.set_title(f"{backbone}, m={m}, {q['users']['test']} test users")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
