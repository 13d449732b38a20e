"""`make tune`: the tuning stage's export (`training.tuning.pipeline.tune_export`), then what the
evaluation stage adds to it before it is served: the serving-task validation (the validation users'
backbone top-10 reranked through vLLM, in the manifest) and the serving policy fitted on those users.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from rich.console import Console

from service.llm.hardware import machine_description
from service.ranking.policy import PolicyError, ServingPolicy, policy_dir
from training.backbones.training import train_backbone
from training.data import Split
from training.evaluation.engine_runs import EvalRequest, engine_cache_dir, sample_users, serving_validation, stage_cache_name, stage_records
from training.evaluation.serving_policy import RULE, feature_source, fit_policy, policy_table, record_inputs, save_policy
from training.paths import Paths
from training.tuning.pipeline import TuneRequest, tune_export
from training.tuning.tune import TuneProfile

console = Console(soft_wrap=True)


def run_tune(req: TuneRequest, paths: Paths) -> Path:
    """The export for `req`, validated and with its serving policy; returns its folder."""
    result = tune_export(req, paths)
    if result.primary:
        ensure_serving_validation(result.export_dir, paths, result.split, req.backbone, result.profile)
        ensure_serving_policy(result.export_dir, paths, result.split, req.backbone, result.profile)
    return result.export_dir


def ensure_serving_policy(export_dir: Path, paths: Paths, split: Split, backbone: str, profile: TuneProfile) -> Path:
    """The serving policy for `backbone`'s lists (`training.evaluation.serving_policy`), fitted on the
    serving-task validation's users and LLM outputs (its cache) unless one for this model and data
    is there already; the policy's feature backbones are trained first when missing."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    folder = policy_dir(export_dir, backbone)
    names = tuple(dict.fromkeys((*profile.policy_backbones, backbone)))
    with contextlib.suppress(PolicyError):
        policy = ServingPolicy.load(folder)
        # a policy chosen under an older rule (before the shuffled-score control, say) is chosen again
        if (policy.model_run_key, policy.data_fingerprint, policy.feature_backbones, policy.rule) == (manifest["run_key"], manifest.get("data_fingerprint"), names, RULE):
            console.print(policy_table(policy))
            return folder / "policy.json"
    t0 = time.perf_counter()
    for name in names:
        train_backbone(name, split.dataset, split, paths)
    req = EvalRequest(dataset=split.dataset.name, valid_users=profile.serving_validation_users)
    users = sample_users(split, req.valid_users, req.seed + 1)
    cache = engine_cache_dir(paths, split.dataset.name, manifest["run_key"]) / stage_cache_name(backbone, "valid", req.ms[0], len(users), req.seed, req.score_every_user)
    records = stage_records(cache, None)
    source = feature_source(paths, split, names)
    fit = fit_policy(split, records, [record_inputs(source, split, r, backbone) for r in records], backbone, seed=req.seed, feature_backbones=names,
                     model_run_key=manifest["run_key"], data_fingerprint=manifest.get("data_fingerprint"), machine=machine_description(), n_boot=req.bootstrap)
    path = save_policy(fit, split, export_dir)
    console.print(policy_table(fit.policy))
    console.print(f"serving policy -> {path} ({time.perf_counter() - t0:.0f}s)")
    return path


def ensure_serving_validation(export_dir: Path, paths: Paths, split: Split, backbone: str, profile: TuneProfile) -> dict:
    """Adds `serving_validation` to the export's manifest when it is missing: validation users'
    `backbone` top-10 reranked through vLLM (`training.evaluation.engine_runs.serving_validation`). The hybrid's
    NDCG@3 there is what tuning variants are compared on."""
    manifest_file = export_dir / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    if "serving_validation" not in manifest:
        console.print(f"serving-task validation: {backbone} top-10 of the validation users, reranked through vLLM")
        manifest["serving_validation"] = serving_validation(paths, split, export_dir, backbone, EvalRequest(dataset=split.dataset.name, valid_users=profile.serving_validation_users))
        tmp = manifest_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(manifest_file)
    result = manifest["serving_validation"]
    gain = result["hybrid_vs_backbone"]
    console.print(
        f"serving validation ({result['users']} users, NDCG@3): "
        + ", ".join(f"{k} {v:.4f}" for k, v in result["NDCG@3"].items())
        + f"; hybrid - backbone {gain['diff']:+.4f} [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]"
    )
    return result
