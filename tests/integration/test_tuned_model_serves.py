"""A tiny end-to-end tuning run: its merged export loads in a real vLLM (CPU) server and answers a
pointwise prompt with a rating digit scored from logprobs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from service.llm.prompt_tokens import PromptEncoder
from service.ranking.scoring import expected_rating
from tests.conftest import CACHE
from tests.integration.conftest import TINY
from training.evaluation.workflow import run_tune
from training.paths import Paths
from training.tuning.instructions import read_jsonl


def test_export_is_a_complete_model_folder_with_a_manifest(tiny_export):
    names = {p.name for p in tiny_export.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "manifest.json"} <= names
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["sampling"] == "uniform" and manifest["profile"]["name"] == "tiny"
    assert len(manifest["data_hash"]) == 64
    for metric in ("answer_loss", "pointwise_mae", "pairwise_accuracy", "listwise_hits_at_5"):
        assert set(manifest["validation"][metric]) == {"base", "tuned"}
    assert set(manifest["validation"]["reference"]) == {"pointwise_mae_of_median", "pairwise_accuracy_of_hint", "listwise_hits_at_5_of_hint"}
    assert manifest["hints"] == "honest" and manifest["machine"]
    for where in ("instructions", "validation", "validation_stage", "test"):
        assert 0 <= manifest["hint_reliability"][where]["pairwise_accuracy"] <= 1


def test_the_manifest_reports_the_serving_task_on_validation_users(tiny_export):
    serving = json.loads((tiny_export / "manifest.json").read_text())["serving_validation"]
    assert serving["users"] == 16 and serving["m"] == 10
    assert set(serving["NDCG@3"]) == {"backbone", "pointwise", "pairwise", "listwise", "hybrid"}
    gain = serving["hybrid_vs_backbone"]
    assert abs(gain["diff"] - (serving["NDCG@3"]["hybrid"] - serving["NDCG@3"]["backbone"])) < 1e-9
    assert gain["ci_low"] <= gain["diff"] <= gain["ci_high"]


def test_eval_reports_every_method_paired_with_the_backbone_and_updates_the_quality_table(tiny_export, tiny_artifacts, tmp_path):
    from training.evaluation.evaluate import EvalRequest, run_eval

    req = EvalRequest(backbones=("pop",), feature_backbones=("pop",), test_users=24, valid_users=24, model_dir=tiny_export, reports_dir=tmp_path, dtype="float32", bootstrap=200)
    run_eval(req, Paths(cache=CACHE, artifacts=tiny_artifacts))
    from training.evaluation.quality_report import default_variant

    # The default variant's report has the plain name; any other carries its variant in the name.
    stem = "eval-ml-100k-pop" if default_variant() == "honest_hints" else "eval-ml-100k-honest_hints-pop"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert report["users"] == {"test": 24, "valid": 24}
    methods = {r["method"] for r in report["rows"]}
    assert {"backbone", "hybrid", "learned", "learned_no_llm", "rank_mean_no_llm"} <= methods
    paired = {(p["method"], p["vs"]) for p in report["paired"] if p["metric"] == "NDCG@3"}
    assert ("learned", "learned_no_llm") in paired and ("hybrid", "backbone") in paired
    quality = json.loads((tmp_path / "quality-ml-100k.json").read_text())
    assert quality["default"] == default_variant() and quality["users"] == {"test": 24, "valid": 24}
    assert {r["variant"] for r in quality["rows"]} == {"honest_hints"}
    policy = json.loads((tiny_export / "policy" / "pop" / "policy.json").read_text())
    assert set(policy["validation"]) >= {"backbone", "rank_mean_no_llm"} and policy["method"] in policy["validation"]
    assert report["policy"]["method"] == policy["method"]


def test_second_run_reuses_the_export(tiny_export, tiny_artifacts):
    before = (tiny_export / "model.safetensors").stat().st_mtime_ns
    again = run_tune(TINY, Paths(cache=CACHE, artifacts=tiny_artifacts))
    assert again == tiny_export and (tiny_export / "model.safetensors").stat().st_mtime_ns == before


def test_vllm_serves_the_export_and_answers_a_pointwise_prompt_with_a_digit(tiny_export, vllm_tiny):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    rows = read_jsonl(Path(manifest["instruction_set"]) / "valid.jsonl")
    row = next(r for r in rows if r["task"] == "pointwise")
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    # the token ids as the model was tuned on them and the gateway sends them
    prompt = PromptEncoder.from_hf_tokenizer(tokenizer, manifest["prompt_config"]["token_block"]).encode(text)
    resp = httpx.post(
        f"{vllm_tiny.base_url}/v1/completions",
        json={"model": vllm_tiny.served_name, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["text"].strip() in {"1", "2", "3", "4", "5"}
    score = expected_rating(choice["logprobs"]["top_logprobs"][0])
    assert score.valid and 1.0 <= score.value <= 5.0


def test_prefix_reuse_cuts_the_prompt_tokens_of_a_request(tiny_export):
    from service.ranking.prompts import Candidate, RatedItem, UserProfile, listwise_prompt, pairwise_prompt, pointwise_prompt
    from training.evaluation.evaluate import prompt_token_cost

    user = UserProfile(liked=[RatedItem(f"Liked film {i}", 5) for i in range(10)], disliked=[RatedItem("Bad film", 1)])
    cands = [Candidate(f"Candidate {i}", i + 1) for i in range(20)]
    msgs = [pointwise_prompt(user, c).messages for c in cands] + [pairwise_prompt(user, cands[0], cands[1]).messages, listwise_prompt(user, cands).messages]
    cost = prompt_token_cost(AutoTokenizer.from_pretrained(tiny_export), msgs)
    assert cost["prompts"] == 22 and cost["shared_prefix"] > 50
    # each pointwise prompt after the first reuses the user block and the question, not only the
    # user block: far less than the prompt's own length is recomputed
    assert cost["with_reuse"] < cost["without_reuse"] - cost["shared_prefix"] * 21
    per_pointwise = (cost["with_reuse"] - prompt_token_cost(AutoTokenizer.from_pretrained(tiny_export), msgs[:1])["with_reuse"]) / 21
    assert per_pointwise < 40
    blocks = prompt_token_cost(AutoTokenizer.from_pretrained(tiny_export), msgs, block_size=32)
    assert cost["with_reuse"] < blocks["with_reuse"] < cost["without_reuse"]
