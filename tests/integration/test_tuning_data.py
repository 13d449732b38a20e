"""What the tuner trains on: the answer tokens only, on the exact prompt serving sends."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tests.conftest import CACHE
from training.tuning.base_model import ensure_base_model
from training.tuning.tune import encode_example, last_checkpoint

ROW = {
    "prompt": [
        {"role": "system", "content": "You are a movie recommender."},
        {"role": "user", "content": "# User\nMovies the user liked: Heat (5)\n\n## Question\nHow would the user rate the movie \"Babe\"? Answer with one digit from 1 to 5."},
    ],
    "completion": [{"role": "assistant", "content": "4"}],
}


def test_labels_cover_the_answer_and_end_of_turn_only():
    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(CACHE))
    enc = encode_example(tokenizer, ROW, max_length=512)
    labelled = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100]
    assert tokenizer.decode(labelled).startswith("4<|im_end|>")
    prompt = tokenizer.apply_chat_template(ROW["prompt"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == prompt


def test_long_prompts_are_cut_from_the_oldest_history_and_keep_the_answer():
    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(CACHE))
    enc = encode_example(tokenizer, ROW, max_length=20)
    assert len(enc["input_ids"]) == 20
    assert tokenizer.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100]).startswith("4")


def test_resume_picks_the_latest_checkpoint_by_step_number(tmp_path: Path):
    for step in (2, 10, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert last_checkpoint(tmp_path).name == "checkpoint-10"
    assert last_checkpoint(tmp_path / "none") is None


def test_the_tuner_trains_on_the_token_ids_the_gateway_sends():
    """Training encodes with transformers, the gateway with the model folder's tokenizer.json and
    its own template renderer: the block-aligned prompt ids must be the same."""
    from service.llm.chat_template import ChatTemplate
    from service.llm.prompt_tokens import PromptEncoder

    folder = ensure_base_model(CACHE)
    enc = encode_example(AutoTokenizer.from_pretrained(folder), ROW, max_length=512, token_block=32)
    prompt_ids = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label == -100]
    sent = PromptEncoder.from_model_dir(folder, 32).encode(ChatTemplate.from_model_dir(folder).render(ROW["prompt"]))
    assert prompt_ids == sent
    plain = encode_example(AutoTokenizer.from_pretrained(folder), ROW, max_length=512)
    assert len(prompt_ids) > len([label for label in plain["labels"] if label == -100])
