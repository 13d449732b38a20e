"""Offline evaluation: rerank each backbone's top-m with the tuned LLM through a real vLLM server and
the very engine the service runs, then compare the backbone, each task, the hybrid and the learned
fusion (with and without LLM features).

Decisions: every evaluated user at both stages by default (942 on ML-100K; 200 users cannot tell a
10% gain from noise), m = 10 (m = 20 on request); prompts read only the training part of the split,
as in tuning. Everything chosen (hybrid weights, the learned fusions, whether the LLM's features are
kept) is fitted on the validation stage (the validation item as the relevant one, the backbone's
validation-time top-m as candidates) and only applied to the test stage.
The non-LLM competitor `learned_no_llm` is LightGBM LambdaRank over the scores and ranks of several
backbones, training-period popularity, genre overlap and recency (`service.ranking.features`);
`learned` adds the three LLM task utilities to the same features and falls back to
`learned_no_llm` unless cross-validation on the validation users shows the LLM clearly helps.
Fitting and selection are `training.evaluation.fusion_selection`'s, the serving policy (which method `/rerank`
serves) `training.evaluation.serving_policy`'s; the learned rankers' inputs come from the gateway's own builder
(`service.backbones.feature_source`) and every fused order is `fuse`'s, the call the gateway serves. Each method's per-user HR@k / NDCG@k is compared, paired, with the backbone's
and with `learned_no_llm`'s (`training.paired_stats`). Raw engine outputs are cached per model and
backbone, so re-running only recomputes the report.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console

from service.llm.client import VLLMClient
from service.llm.hardware import machine_description
from service.llm.prompt_tokens import PromptEncoder
from service.ranking.fusion import fuse
from service.ranking.item_tokens import prompt_config_of_model
from service.ranking.prompts import PromptConfig
from training.backbones.artifacts import load_backbone
from training.backbones.training import train_backbone
from training.data import DataError, Split, leave_one_out, load_dataset, require_held_out_users
from training.data.fingerprint import dataset_fingerprint
from training.evaluation.engine_runs import (
    TASK_METHODS,
    EvalRequest,
    Record,
    candidate_lists,
    engine_cache_dir,
    llm_clients,
    method_orders,
    relevant_index,
    run_engine,
    sample_users,
    stage_cache_name,
    stage_records,
    target_rank,
    utilities_of,
)
from training.evaluation.fusion_selection import select_hybrid_weights
from training.evaluation.quality_report import default_variant, variant_of
from training.evaluation.serving_policy import feature_source, fit_policy, method_order, policy_table, record_inputs, save_policy
from training.evaluation.variant_pairs import update_quality_report
from training.metrics import KS, hit_gains, metrics_from_ranks, ndcg_gains
from training.paired_stats import paired_comparison
from training.paths import Paths

console = Console(soft_wrap=True)
METHODS = ("backbone", *TASK_METHODS, "hybrid", "hybrid_tuned", "rank_mean_no_llm", "learned_no_llm", "learned")
UNFITTED = ("backbone", *TASK_METHODS, "hybrid", "rank_mean_no_llm")  # scored on validation users too
REFERENCES = ("backbone", "learned_no_llm")  # what each method is compared with, paired


def metric_rows(ranks: dict[str, np.ndarray], hit: np.ndarray, m: int) -> list[dict]:
    rows = []
    for subset, mask in (("all", np.ones_like(hit, dtype=bool)), ("hit", hit)):
        for method, r in ranks.items():
            rows.append({"method": method, "m": m, "subset": subset, "users": int(mask.sum()), **metrics_from_ranks(r[mask])})
    return rows


def paired_rows(ranks: dict[str, np.ndarray], m: int, n_boot: int, seed: int, ks: tuple[int, ...] = KS) -> list[dict]:
    """Each method against each reference, on the same users: NDCG@k and HR@k differences for every
    k with bootstrap intervals, paired t-test p-values and the minimal detectable effect
    (`paired_comparison`, the report's one bootstrap)."""
    out = []
    for ref in REFERENCES:
        if ref not in ranks:
            continue
        for method, r in ranks.items():
            if method == ref:
                continue
            for k in ks:
                for kind, gains in (("NDCG", ndcg_gains), ("HR", hit_gains)):
                    cmp = paired_comparison(gains(r, k), gains(ranks[ref], k), n_boot=n_boot, seed=seed)
                    out.append({"method": method, "m": m, "metric": f"{kind}@{k}", "vs": ref, **cmp})
    return out


def moves(ranks: dict[str, np.ndarray], k: int = 3) -> dict[str, dict[str, int]]:
    """Like the paper's figure: users whose target moved into (wrong->right) or out of the top-k."""
    base_in = (ranks["backbone"] >= 0) & (ranks["backbone"] < k)
    out = {}
    for method, r in ranks.items():
        if method == "backbone":
            continue
        now_in = (r >= 0) & (r < k)
        out[method] = {"wrong_to_right": int((~base_in & now_in).sum()), "right_to_wrong": int((base_in & ~now_in).sum())}
    return out


def stage_backbone_scores(paths: Paths, split: Split, names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """{stage: {backbone: (n_users, n_items) scores}} from each backbone's state at that stage."""
    all_users = np.arange(split.n_users)
    out: dict[str, dict[str, np.ndarray]] = {"valid": {}, "test": {}}
    for name in names:
        model = load_backbone(paths.backbone_dir(split.dataset.name, name))
        for stage in out:
            out[stage][name] = model.score(all_users, [split.history(u, stage) for u in all_users])
    return out


def evaluate_backbone(req: EvalRequest, paths: Paths, split: Split, backbone: str, new_client: Callable[[], VLLMClient], prompt_cfg: PromptConfig, run_key: str, model_dir: Path,
                      all_scores: dict[str, dict[str, np.ndarray]]) -> dict:
    """`all_scores`: `stage_backbone_scores` of the list backbones, computed once per run. The serving
    policy for this backbone's lists (`training.evaluation.serving_policy`) is fitted on the validation users
    and saved next to the model; its models give the learned rows of the test users."""
    ds = split.dataset
    folder = paths.backbone_dir(ds.name, backbone)
    tops = candidate_lists(folder, ds)
    names = tuple(dict.fromkeys((*req.feature_backbones, backbone)))
    source = feature_source(paths, split, names)
    stage_users = {"test": sample_users(split, req.test_users, req.seed), "valid": sample_users(split, req.valid_users, req.seed + 1)}
    cache_dir = engine_cache_dir(paths, ds.name, run_key)
    report: dict = {"rows": [], "paired": [], "validation": {}, "cv": {}, "moves": {}, "llm": {}, "fusion_models": {}, "policy": {},
                    "users": {stage: int(len(u)) for stage, u in stage_users.items()}, "feature_backbones": list(names)}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for m in req.ms:
        records: dict[str, list[Record]] = {}
        inputs: dict[str, list] = {}
        for stage, users in stage_users.items():
            records[stage] = stage_records(cache_dir / stage_cache_name(backbone, stage, m, len(users), req.seed, req.score_every_user),
                                           functools.partial(run_engine, new_client, split, users, stage, m, tops, prompt_cfg, all_scores[stage][backbone], req.concurrent_users,
                                                             req.score_every_user))
            inputs[stage] = [record_inputs(source, split, r, backbone) for r in records[stage]]
        fit = fit_policy(split, records["valid"], inputs["valid"], backbone, seed=req.seed, feature_backbones=names, model_run_key=run_key,
                         data_fingerprint=manifest.get("data_fingerprint"), machine=machine_description(), n_boot=req.bootstrap)
        valid_ranks = {method: [] for method in UNFITTED}
        for rec, x in zip(records["valid"], inputs["valid"], strict=True):
            orders = method_orders(rec) | {"rank_mean_no_llm": method_order("rank_mean_no_llm", rec, x, fit.models)}
            for method, order in orders.items():
                valid_ranks[method].append(target_rank(order, rec))
        report["validation"][f"m{m}"] = {method: metrics_from_ranks(np.asarray(r), (3,)) for method, r in valid_ranks.items()}
        if m == req.ms[0]:  # the policy the gateway serves is fitted on its default list length
            path = save_policy(fit, split, model_dir)
            report["fusion_models"] = {name: str(path.parent / file) for name, file in fit.policy.fitted_models.items()}
            report["policy"] = asdict(fit.policy)
            console.print(policy_table(fit.policy))
        for name, cv in fit.cv.items():
            report["cv"][f"{name}_m{m}"] = cv
        uses_llm = bool(fit.cv.get("learned", {}).get("uses_llm_features"))
        tuned_weights = select_hybrid_weights([(r.m, utilities_of(r), relevant_index(r)) for r in records["valid"]], k=3)
        report.setdefault("hybrid_tuned_weights", {})[f"m{m}"] = tuned_weights
        test = records["test"]
        ranks: dict[str, list[int]] = {method: [] for method in METHODS}
        for rec, x in zip(test, inputs["test"], strict=True):
            orders = method_orders(rec)
            orders["hybrid_tuned"] = fuse(rec.m, utilities_of(rec), weights=tuned_weights).order
            for method in ("rank_mean_no_llm", "learned_no_llm"):
                orders[method] = method_order(method, rec, x, fit.models)
            orders["learned"] = method_order("learned", rec, x, fit.models) if uses_llm else orders["learned_no_llm"]
            for method, order in orders.items():
                ranks[method].append(target_rank(order, rec))
        arrays = {k: np.asarray(v) for k, v in ranks.items()}
        hit = arrays["backbone"] >= 0
        report["rows"] += metric_rows(arrays, hit, m)
        report["paired"] += paired_rows(arrays, m, req.bootstrap, req.seed)
        report["moves"][f"m{m}"] = moves(arrays, k=3)
        asked = [r for r in test if r.scored]
        report["llm"][f"m{m}"] = {
            "users_asked": len(asked),  # the others' lists lack the test item: every ranking scores 0
            "invalid_answers": {t: int(sum(r.invalid.get(t, 0) for r in asked)) for t in TASK_METHODS},
            "dropped_tasks": int(sum(len(r.dropped) for r in asked)),
            "seconds_per_user": float(np.mean([r.seconds for r in asked])) if asked else None,
        }
    return report


def markdown(report: dict, backbone: str, dataset: str) -> str:
    cols = [f"{kind}@{k}" for k in KS for kind in ("HR", "NDCG")]
    lines = [f"# Reranking {backbone} on {dataset}", ""]
    for m in sorted({r["m"] for r in report["rows"]}):
        for subset in ("all", "hit"):
            rows = [r for r in report["rows"] if r["m"] == m and r["subset"] == subset]
            lines += [f"## m = {m}, {subset} test users ({rows[0]['users']})", "", "| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            lines += [f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |" for r in rows]
            lines.append("")
        lines += [
            f"### m = {m}: paired NDCG@3 differences (all test users), 95% bootstrap interval, paired t-test, minimal detectable effect at 80% power",
            "",
            "| method | vs | diff | 95% interval | p | MDE |",
            "|---|---|---:|---|---:|---:|",
        ]
        lines += [
            f"| {p['method']} | {p['vs']} | {p['diff']:+.4f} | [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['p_value']:.3f} | {p['mde']:.4f} |"
            for p in report.get("paired", []) if p["m"] == m and p["metric"] == "NDCG@3"
        ]
        lines.append("")
    lines += [
        "## Learned fusion, 5-fold cross-validation on the validation users (NDCG@3)",
        "",
        "`learned`: the boosted model alone; `guarded`: the learned fusion as served (the model, or its",
        "fallback when the guard, decided on the training folds only, finds no clear gain);",
        "`fallback`: what the model fitted on all validation users serves instead of itself.",
        "",
        "| model | learned | guarded | hybrid | backbone | guarded - hybrid | fallback folds | fallback |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, cv in report["cv"].items():
        lines.append(
            f"| {name} | {cv['learned']:.4f} | {cv['guarded']:.4f} | {cv['hybrid']:.4f} | {cv['backbone']:.4f} | "
            f"{cv['guarded'] - cv['hybrid']:+.4f} | {cv['fallback_folds']}/{cv['folds']} | {'(a control, not served)' if cv.get('control') else cv['fallback'] or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def plot_moves(report: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(report["moves"].items())
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (m, moved) in zip(axes[0], panels):
        methods = list(moved)
        x = np.arange(len(methods))
        ax.bar(x - 0.2, [moved[k]["wrong_to_right"] for k in methods], 0.4, label="wrong -> right", color="tab:green")
        ax.bar(x + 0.2, [moved[k]["right_to_wrong"] for k in methods], 0.4, label="right -> wrong", color="tab:red")
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_title(f"{title}, {m}: test item in/out of the top 3")
        ax.set_ylabel("users")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_eval(req: EvalRequest, paths: Paths) -> list[Path]:
    dataset = load_dataset(req.dataset, req.data_path, cache_dir=paths.cache)
    split = require_held_out_users(leave_one_out(dataset), req.data_path or req.dataset)
    req.reports_dir.mkdir(parents=True, exist_ok=True)
    model_dir = req.model_dir or (paths.artifacts / dataset.name / "model")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    tuned_on = manifest.get("data_fingerprint")
    if tuned_on is not None and tuned_on != dataset_fingerprint(dataset):
        raise DataError(req.data_path or req.dataset, f"{model_dir} was tuned on other data (fingerprint {tuned_on[:12]}, these files {dataset_fingerprint(dataset)[:12]}); run `make tune` on them first")
    prompt_cfg = prompt_config_of_model(model_dir, manifest["prompt_config"])
    for backbone in dict.fromkeys((*req.backbones, *req.feature_backbones)):  # `make tune` trains only the hint backbone; a trained one is skipped
        train_backbone(backbone, dataset, split, paths)
    all_scores = stage_backbone_scores(paths, split, tuple(req.backbones))
    out = []
    reports = {}
    with llm_clients(req, paths, model_dir, prompt_cfg) as new_client:
        for backbone in req.backbones:
            report = evaluate_backbone(req, paths, split, backbone, new_client, prompt_cfg, manifest["run_key"], model_dir, all_scores)
            report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(req).items()} | {"backbone": backbone, "model_run_key": manifest["run_key"]}
            variant = variant_of(manifest)
            base = req.reports_dir / (f"eval-{dataset.name}-{backbone}" if variant == default_variant() else f"eval-{dataset.name}-{variant}-{backbone}")
            base.parent.mkdir(exist_ok=True)
            base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
            base.with_suffix(".md").write_text(markdown(report, backbone, dataset.name))
            plot_moves(report, base.with_suffix(".png"), backbone)
            console.print(base.with_suffix(".md").read_text())
            out.append(base.with_suffix(".json"))
            reports[backbone] = report
    out += update_quality_report(req.reports_dir, dataset.name, manifest, reports, paths)
    return out


def prompt_token_cost(tokenizer, messages_list: list[list[dict[str, str]]], block_size: int = 1, token_block: int = 0) -> dict[str, int]:
    """Prompt tokens of one request's prompts: computed in full for each prompt (no reuse), and
    with prefix caching, where a prompt recomputes only what follows its longest common prefix
    with an earlier prompt, rounded down to whole `block_size` blocks as vLLM caches them.
    `token_block` encodes the prompts on that block layout (`PromptConfig.token_block`).
    `shared_prefix` is the prefix common to all prompts (the user block)."""
    encoder = PromptEncoder.from_hf_tokenizer(tokenizer, token_block)
    ids = [encoder.encode(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)) for m in messages_list]

    def common(a: list[int], b: list[int]) -> int:
        return len(os.path.commonprefix([a, b]))

    shared = min((common(ids[0], x) for x in ids[1:]), default=len(ids[0]) if ids else 0)
    computed = 0
    for i, x in enumerate(ids):
        reused = max((common(x, ids[j]) for j in range(i)), default=0) // block_size * block_size
        computed += len(x) - min(reused, len(x) - 1)  # the last token is always computed
    total = sum(len(x) for x in ids)
    return {"prompts": len(ids), "without_reuse": total, "shared_prefix": shared, "with_reuse": computed}
