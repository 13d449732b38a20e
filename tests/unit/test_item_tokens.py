"""Collaborative item tokens: how prompts name items, the token table a model folder holds, the
projection and its export rows, the shuffled ablation, and the tuning request that asks for them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from service.gateway.app import StartupError, prompt_config_of
from service.llm.prompt_tokens import PromptEncoder
from service.ranking.item_tokens import ItemTokensError, ItemTokenTable, attach_token_table, item_token, prompt_config_of_model
from service.ranking.prompts import Candidate, PromptConfig, RatedItem, UserProfile, listwise_prompt, pairwise_prompt, pointwise_prompt
from tests.conftest import CACHE
from training.data import leave_one_out
from training.evaluation.quality_report import VARIANTS, variant_of
from training.tuning.item_tokens import (
    ItemTokenEmbedding,
    ItemTokenSet,
    add_item_tokens,
    build_item_token_set,
    derangement,
    new_projection,
    write_item_rows,
)
from training.tuning.pipeline import INSTRUCTIONS_VERSION, NOT_TUNING_INPUTS, TuneRequest
from training.tuning.tune import PROFILES

USER = UserProfile(liked=[RatedItem("Toy Story", 5, "1"), RatedItem("Heat", 4, "6")], disliked=[RatedItem("Striptease", 1, "9")])
CANDS = [Candidate("Fargo", 1, "100"), Candidate("New Film", 2, "2000")]  # 2000: added after the export
TABLE = ItemTokenTable(["1", "6", "9", "100"])


def text(prompt) -> str:
    return prompt.messages[1]["content"]


def test_history_and_candidate_lines_carry_the_token_beside_the_title():
    cfg = PromptConfig(item_tokens="beside", token_table=TABLE)
    shared = text(pointwise_prompt(USER, CANDS[0], cfg))
    assert "<item:1> Toy Story (5); <item:6> Heat (4)" in shared and "<item:9> Striptease (1)" in shared
    assert 'Movie: <item:100> "Fargo"' in shared
    assert 'A: <item:100> "Fargo"' in text(pairwise_prompt(USER, CANDS[0], CANDS[1], cfg))
    assert "A. <item:100> Fargo" in text(listwise_prompt(USER, CANDS, cfg))


def test_token_only_mode_names_items_by_their_token_alone():
    cfg = PromptConfig(item_tokens="only", token_table=TABLE)
    prompt = text(pairwise_prompt(USER, CANDS[0], CANDS[1], cfg))
    assert "<item:1> (5); <item:6> (4)" in prompt and "Toy Story" not in prompt
    assert "A: <item:100>\n" in prompt and "Fargo" not in prompt


@pytest.mark.parametrize("mode", ["beside", "only"])
def test_an_item_added_after_the_export_is_named_by_its_title_alone(mode):
    cfg = PromptConfig(item_tokens=mode, token_table=TABLE)
    assert 'B: "New Film"' in text(pairwise_prompt(USER, CANDS[0], CANDS[1], cfg))
    assert "B. New Film" in text(listwise_prompt(USER, CANDS, cfg))
    assert 'Movie: "New Film"' in text(pointwise_prompt(USER, CANDS[1], cfg))
    assert "<item:2000>" not in text(listwise_prompt(USER, CANDS, cfg))


def test_without_item_tokens_item_ids_change_nothing_in_a_prompt():
    anonymous = UserProfile(liked=[RatedItem(i.title, i.rating) for i in USER.liked], disliked=[RatedItem(i.title, i.rating) for i in USER.disliked])
    plain = [Candidate(c.title, c.backbone_rank) for c in CANDS]
    assert listwise_prompt(USER, CANDS) == listwise_prompt(anonymous, plain)
    assert pairwise_prompt(USER, CANDS[0], CANDS[1]) == pairwise_prompt(anonymous, plain[0], plain[1])


def test_a_config_asking_for_tokens_without_a_table_refuses_to_build_prompts():
    with pytest.raises(ValueError, match="no token table"):
        pointwise_prompt(USER, CANDS[0], PromptConfig(item_tokens="beside"))
    with pytest.raises(ValueError, match="item_tokens"):
        PromptConfig(item_tokens="sometimes")


def test_the_manifest_record_has_the_mode_but_not_the_table_and_reads_back():
    cfg = PromptConfig(item_tokens="beside", token_block=32, token_table=TABLE)
    record = cfg.to_dict()
    assert record["item_tokens"] == "beside" and "token_table" not in record
    json.dumps(record)
    assert PromptConfig(**record) == cfg  # the table is the model's vocabulary, not a setting


def test_ids_that_cannot_sit_inside_a_token_get_none():
    assert item_token("123") == "<item:123>" and item_token("034545104X") == "<item:034545104X>"
    assert item_token("a b") is None and item_token("x>y") is None


@pytest.fixture(scope="module")
def item_token_model_dir(tmp_path_factory):
    """A model folder as the export leaves it: the SmolLM2 tokenizer with three item tokens."""
    from transformers import AutoTokenizer

    from training.tuning.base_model import ensure_base_model

    folder = tmp_path_factory.mktemp("model")
    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(CACHE))
    add_item_tokens(tokenizer, [item_token(i) for i in ("1", "6", "100")])
    tokenizer.save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps({"prompt_config": PromptConfig(item_tokens="beside", token_block=32).to_dict()}))
    return folder


def test_the_token_table_is_read_from_the_tokenizers_added_tokens(item_token_model_dir):
    table = ItemTokenTable.from_tokenizer_file(item_token_model_dir / "tokenizer.json")
    assert dict(table) == {"1": "<item:1>", "6": "<item:6>", "100": "<item:100>"}  # not <issue_closed> and the like


def test_the_gateway_names_known_items_by_their_token_and_new_ones_by_their_title(item_token_model_dir):
    cfg = prompt_config_of(item_token_model_dir, "ml-100k")
    assert cfg.item_tokens == "beside" and cfg.token_block == 32
    prompt = text(listwise_prompt(USER, CANDS, cfg))
    assert "A. <item:100> Fargo" in prompt and "B. New Film" in prompt and "<item:9>" not in prompt


def test_each_item_token_is_one_id_for_training_and_serving_alike(item_token_model_dir):
    from transformers import AutoTokenizer

    cfg = prompt_config_of_model(item_token_model_dir, json.loads((item_token_model_dir / "manifest.json").read_text())["prompt_config"])
    prompt = text(listwise_prompt(USER, CANDS, cfg))
    serving = PromptEncoder.from_model_dir(item_token_model_dir, 32).encode(prompt)
    training = PromptEncoder.from_hf_tokenizer(AutoTokenizer.from_pretrained(item_token_model_dir), 32).encode(prompt)
    assert serving == training
    tokenizer = AutoTokenizer.from_pretrained(item_token_model_dir)
    ids = tokenizer.convert_tokens_to_ids(["<item:1>", "<item:6>", "<item:100>"])
    assert [i for i in serving if i in ids] == ids  # Toy Story, Heat, Fargo: one id each, in order
    # the space before a token is part of it: naming an item costs one token, not two
    assert len(tokenizer("Liked: <item:1> Toy", add_special_tokens=False)["input_ids"]) == len(tokenizer("Liked: Toy", add_special_tokens=False)["input_ids"]) + 1


def test_a_model_tuned_with_item_tokens_without_them_in_its_tokenizer_does_not_start(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"prompt_config": {"item_tokens": "beside"}}))
    with pytest.raises(StartupError, match="tokenizer.json"):
        prompt_config_of(tmp_path, "ml-100k")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 0, "content": "<|endoftext|>"}]}))
    with pytest.raises(ItemTokensError, match="no <item:ID> tokens"):
        attach_token_table(PromptConfig(item_tokens="only"), tmp_path)


# --- training side ------------------------------------------------------------------------


def test_tokens_are_given_to_the_items_the_backbone_learned_from(synthetic, tmp_path):
    split = leave_one_out(synthetic)
    np.save(tmp_path / "item_vectors.npy", np.arange(synthetic.n_items * 3, dtype=np.float32).reshape(-1, 3))
    tokens = build_item_token_set(split, tmp_path)
    liked = {synthetic.items[int(i)].item_id for i in split.liked_pairs()[1]}
    assert set(tokens.item_ids) == liked and tokens.kind == "real"
    for item_id, row in zip(tokens.item_ids, tokens.vectors):
        assert row[0] == 3 * synthetic.item_index[item_id]  # each token's own vector


def test_the_shuffled_ablation_gives_every_item_another_items_vector(synthetic, tmp_path):
    split = leave_one_out(synthetic)
    np.save(tmp_path / "item_vectors.npy", np.random.default_rng(0).normal(size=(synthetic.n_items, 4)).astype(np.float32))
    real, shuffled = build_item_token_set(split, tmp_path, "real", seed=5), build_item_token_set(split, tmp_path, "shuffled", seed=5)
    assert shuffled.item_ids == real.item_ids and shuffled.kind == "shuffled"
    assert sorted(map(tuple, shuffled.vectors)) == sorted(map(tuple, real.vectors))  # the same vectors
    assert not np.any(np.all(shuffled.vectors == real.vectors, axis=1))  # none left with its item
    assert np.array_equal(shuffled.vectors, build_item_token_set(split, tmp_path, "shuffled", seed=5).vectors)
    assert sorted(derangement(50, 1).tolist()) == list(range(50)) and not np.any(derangement(50, 1) == np.arange(50))


def test_the_token_set_an_instruction_set_was_built_with_reads_back(tmp_path):
    tokens = ItemTokenSet(["1", "2"], np.ones((2, 3), dtype=np.float32), "real", "somewhere")
    tokens.save(tmp_path)
    back = ItemTokenSet.load(tmp_path)
    assert back.item_ids == ["1", "2"] and np.array_equal(back.vectors, tokens.vectors) and back.describe() == tokens.describe()
    assert ItemTokenSet.load(tmp_path / "none") is None


def test_item_tokens_read_their_projected_vector_and_train_the_projection_only():
    words = torch.nn.Embedding(10, 6)
    words.weight.requires_grad_(False)
    tokens = ItemTokenSet(["a", "b"], np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32), "real", "")
    projection = new_projection(tokens, words.weight, seed=0)
    embedding = ItemTokenEmbedding(words, projection, tokens.vectors, [10, 11])
    out = embedding(torch.tensor([[3, 10, 11, 4]]))
    assert torch.equal(out[0, 0], words.weight[3]) and torch.equal(out[0, 3], words.weight[4])
    rows = projection(torch.as_tensor(tokens.vectors))
    assert torch.allclose(out[0, 1:3], rows)
    # rescaled to the words' mean norm, whatever the vectors' scale
    assert torch.allclose(rows.norm(dim=1), words.weight.norm(dim=1).mean().expand(2), atol=1e-5)
    out.sum().backward()
    assert projection.mlp[0].weight.grad is not None and words.weight.grad is None


def test_the_export_writes_the_rows_and_keeps_item_tokens_out_of_every_answer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.tuning.base_model import ensure_base_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(CACHE))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    words = model.get_output_embeddings().weight.detach().clone()
    tokens = ItemTokenSet(["1", "2", "3"], np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "real", "")
    projection = new_projection(tokens, model.get_input_embeddings().weight, seed=0)
    written = write_item_rows(model, tokenizer, tokens, projection)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    back, back_tokenizer = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    ids = back_tokenizer.convert_tokens_to_ids(tokens.tokens)
    assert written["count"] == 3 and [written["first_token_id"], written["last_token_id"]] == [ids[0], ids[-1]]
    assert not back.config.tie_word_embeddings and back.config.vocab_size == len(back_tokenizer)
    with torch.no_grad():
        assert torch.allclose(back.get_input_embeddings().weight[ids], projection(torch.as_tensor(tokens.vectors)), atol=1e-6)
        assert torch.equal(back.get_output_embeddings().weight[: len(words)], words)  # the words answer as before
        hidden = torch.randn(64, 16)
        logits = hidden @ back.get_output_embeddings().weight.T
    # an item token's logit is minus the words' mean logit, so below every word wherever the words' logits are positive
    assert torch.allclose(logits[:, ids], -logits[:, : len(words)].mean(dim=1, keepdim=True).expand(-1, 3), atol=1e-4)


# --- the tuning request -------------------------------------------------------------------


def test_an_existing_exports_run_key_is_unchanged_by_the_item_token_fields_the_draws_scale_and_the_seed():
    # The key as it was before these request fields existed: at their defaults they are left out.
    req, profile = TuneRequest(), PROFILES["cpu"]
    fields = {k: str(v) for k, v in asdict(req).items() if k not in ("export_dir", "data_path", "item_tokens", "item_vectors", "draws_scale", "seed")}
    blob = json.dumps({"req": fields, "data": "fp", "profile": profile.model_dump(exclude=NOT_TUNING_INPUTS), "instructions_version": INSTRUCTIONS_VERSION}, sort_keys=True)
    assert req.key(profile, "fp") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    keys = {TuneRequest(**{k: v for k, v in VARIANTS[v].items()}).key(profile, "fp") for v in ("item_tokens", "item_tokens_shuffled", "item_tokens_only")}
    assert len(keys) == 3 and req.key(profile, "fp") not in keys
    half = TuneRequest(draws_scale=0.5)
    assert half.tune_profile().n_draws == PROFILES["cpu"].n_draws // 2 and half.key(half.tune_profile(), "fp") != req.key(profile, "fp")
    replicate = TuneRequest(draws_scale=0.5, seed=2025)
    assert replicate.tune_profile().seed == 2025 and replicate.tune_profile().n_draws == half.tune_profile().n_draws
    assert replicate.key(replicate.tune_profile(), "fp") != half.key(half.tune_profile(), "fp")
    same = TuneRequest(seed=PROFILES["cpu"].seed)
    assert same.tune_profile() == profile and same.key(same.tune_profile(), "fp") == req.key(profile, "fp")


def test_an_unknown_mode_and_shuffled_vectors_without_item_tokens_are_refused():
    with pytest.raises(ValueError, match="needs item tokens"):
        TuneRequest(item_vectors="shuffled")
    with pytest.raises(ValueError, match="item_vectors"):
        TuneRequest(item_tokens="beside", item_vectors="sorted")
    with pytest.raises(ValueError, match="item_tokens"):
        TuneRequest(item_tokens="sometimes")


def test_item_token_variants_are_named_back_from_their_manifests():
    for name in ("item_tokens", "item_tokens_shuffled", "item_tokens_only"):
        assert variant_of(VARIANTS[name]) == name
    assert variant_of({"hints": "paper", "item_tokens": "beside"}) == "paper_hints_item_tokens"


def test_the_gateway_names_each_item_as_the_model_knows_it_and_a_late_one_by_its_title(tmp_path):
    """A rerank request through the real RerankService and engine: history and candidate lines carry
    the tokens of the items the model has one for; the rest (items added after the export) their
    titles alone."""
    import asyncio

    from service.gateway.admission import LLMAdmission
    from service.gateway.cache import MemoryCache
    from service.gateway.history import HistoryCache, ScoreCache
    from service.gateway.metrics import GatewayMetrics
    from service.gateway.reranker import RerankService
    from service.gateway.retrieval import EmbeddedRetriever
    from service.gateway.schemas import RerankRequest
    from service.gateway.settings import GatewaySettings
    from service.gateway.store import InteractionStore
    from service.ranking.engine import EngineConfig, RankingEngine
    from tests.conftest import synthetic_dataset
    from tests.fake_llm import healthy_logprobs
    from training.data.serving_export import write_serving_tables

    class RecordingLLM:
        def __init__(self):
            self.prompts: list[str] = []

        async def next_token_logprobs(self, messages):
            self.prompts.append(messages[-1]["content"])
            return healthy_logprobs(messages[-1]["content"])

        async def generate(self, messages, max_tokens=16, **extra):
            return "A, B, C, D, E"

    dataset = synthetic_dataset(n_users=8, n_items=30, per_user=6)
    store = InteractionStore.from_folder(write_serving_tables(dataset, tmp_path / "serving"))
    known = [str(i) for i in range(25)]  # items 25-29 came after the export
    cfg = PromptConfig(item_tokens="beside", token_table=ItemTokenTable(known))
    rng = np.random.default_rng(0)
    retriever = EmbeddedRetriever("random", rng.normal(size=(dataset.n_users, 4)), rng.normal(size=(dataset.n_items, 4)),
                                  [u.user_id for u in dataset.users], [i.item_id for i in dataset.items])
    settings = GatewaySettings(_env_file=None, dataset="synthetic", default_deadline_ms=5000)
    cache, llm = MemoryCache(), RecordingLLM()
    service = RerankService(settings=settings, store=store, histories=HistoryCache(cache, store, "t", "synthetic", 60), scores=ScoreCache(cache, "t", "synthetic", 60),
                            retriever=retriever, engine=RankingEngine(llm, EngineConfig(prompt=cfg)), metrics=GatewayMetrics(), model_name="m",
                            admission=LLMAdmission(settings.llm_slots, settings.llm_max_waiting))
    out = asyncio.run(service.rerank(RerankRequest(user_id="1", candidates=["3", "27", "8", "12"], k=4), "rid"))
    assert not out.degraded and len(llm.prompts) == 4 + 4 + 1
    listwise = next(p for p in llm.prompts if "Candidate movies:" in p)
    assert "<item:3> Movie 3" in listwise and "<item:8> Movie 8" in listwise and "<item:27>" not in listwise
    assert any(line.endswith(". Movie 27") for line in listwise.splitlines())
    history = [store.items[e.item_id] for e in store.history("1")]
    assert any(f"<item:{it.item_id}> {it.title}" in listwise for it in history if it.item_id in known)
    assert not any(f"<item:{it.item_id}>" in listwise for it in history if it.item_id not in known)
