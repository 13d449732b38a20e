"""LoRA instruction tuning (peft + transformers' Trainer) and the profiles it runs under.

Loss is on the answer only: prompt tokens get the label -100. Checkpoints go to `<run>/checkpoints`; a rerun resumes from the last one.
With collaborative item tokens (`training.tuning.item_tokens`) the item tokens' projection is trained with the
adapter, saved beside it, and written into the merged model's vocabulary at export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from service.llm.hardware import cpu_has_fast_bf16
from service.llm.prompt_tokens import PromptEncoder

if TYPE_CHECKING:
    from training.tuning.item_tokens import ItemTokenSet


class TuneProfile(BaseModel):
    """Everything one tuning run depends on; its hash names the run's folders."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # instruction set
    n_draws: int  # sampled user draws (with replacement); each gives ~4 examples (pairwise twice)
    max_liked: int
    max_disliked: int
    valid_share: float = 0.1
    valid_users_min: int = 50
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    # optimisation
    learning_rate: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1  # overrides epochs when > 0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    max_length: int = 512
    bf16: bool = True
    save_steps: int = 50
    seed: int = 2024
    # After export: validation users (0 = all) reranked through vLLM for the serving-task validation.
    # Not a tuning input, so not part of the run key.
    serving_validation_users: int = 0
    # Then the serving policy is fitted on the same users (training.evaluation.serving_policy) with the scores of
    # these backbones beside the served one's (trained when missing). Not a tuning input either.
    policy_backbones: tuple[str, ...] = ("mf", "lightgcn", "sasrec")


PROFILES: dict[str, TuneProfile] = {
    # 2 CPU cores, under 30 minutes of tuning. Short histories keep examples near 220-330 tokens.
    "cpu": TuneProfile(name="cpu", n_draws=450, max_liked=10, max_disliked=3, epochs=1.0, batch_size=8, valid_share=0.05, valid_users_min=50),
    # One or more GPUs (bf16): the paper's scale of draws and full histories.
    "gpu": TuneProfile(name="gpu", n_draws=5000, max_liked=50, max_disliked=10, epochs=1.0, batch_size=32, learning_rate=5e-4, max_length=1024, save_steps=200),
    # For tests: a handful of steps.
    "tiny": TuneProfile(name="tiny", n_draws=12, max_liked=5, max_disliked=2, max_steps=3, batch_size=4, valid_users_min=4, valid_share=0.01, save_steps=2, serving_validation_users=16,
                          policy_backbones=("mf",)),  # MF (~20 s) beside the hint backbone, so the feature rankers have two backbones
}


def last_checkpoint(folder: Path) -> Path | None:
    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def encode_example(tokenizer, row: dict, max_length: int, token_block: int = 0) -> dict:
    """Token ids of prompt + answer with labels only on the answer (and its end-of-turn token).

    The chat template renders the prompt exactly as serving sends it (generation prompt included)
    and the serving encoder lays it out on `token_block` blocks, so the model is trained on the
    very token sequence it is later scored on."""
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the prompt differently inside the full conversation")
    prompt_ids = PromptEncoder.from_hf_tokenizer(tokenizer, token_block).encode(prompt)
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    # Keep the answer whole; cut the prompt from the left (oldest history) if too long.
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)) :]
    ids = prompt_ids + answer_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt_ids) + answer_ids}


def train_lora(base_model: Path, train_rows: list[dict], out_dir: Path, profile: TuneProfile, token_block: int = 0, item_tokens: ItemTokenSet | None = None) -> Path:
    """Tune a LoRA adapter on `train_rows` (and, with `item_tokens`, their projection); return the
    folder holding the final adapter.

    transformers' Trainer with our own answer-only labels: measured here, TRL's SFTTrainer took
    8-12 s per step against 4-7 s for the same batches (it also computes entropy and token
    accuracy over the full vocabulary every step)."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

    from training.tuning.answer_loss import AnswerOnlyTrainer

    adapter_dir = out_dir / "adapter"
    if (adapter_dir / "adapter_config.json").is_file():
        return adapter_dir
    use_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if (use_gpu and profile.bf16) else torch.float32)
    lora = LoraConfig(
        r=profile.lora_r,
        lora_alpha=profile.lora_alpha,
        lora_dropout=profile.lora_dropout,
        target_modules=profile.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    callbacks, projection = [], None
    if item_tokens is not None:  # after peft: the projection's layers get no LoRA, and train in full
        from training.tuning.item_tokens import add_item_tokens, install_item_embedding, new_projection, projection_saver

        token_ids = add_item_tokens(tokenizer, item_tokens.tokens)
        projection = new_projection(item_tokens, model.get_input_embeddings().weight, profile.seed)
        install_item_embedding(model, projection, item_tokens, token_ids)
        callbacks.append(projection_saver(projection))
    dataset = [encode_example(tokenizer, r, profile.max_length, token_block) for r in train_rows]
    ckpt_dir = out_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        num_train_epochs=profile.epochs,
        max_steps=profile.max_steps,
        warmup_steps=profile.warmup_ratio,  # a float below 1 is a share of all steps
        lr_scheduler_type="cosine",
        # bf16 autocast only where it is native: emulated on an AVX2-only CPU it is ~30x slower
        bf16=profile.bf16 and (use_gpu or cpu_has_fast_bf16()),
        use_cpu=not use_gpu,
        train_sampling_strategy="group_by_length",  # less padding: batches of similar length
        logging_steps=5,
        save_steps=profile.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=profile.seed,
        dataloader_num_workers=0,
    )
    trainer = AnswerOnlyTrainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=callbacks)
    resume = last_checkpoint(ckpt_dir)
    if projection is not None and resume is not None:
        from training.tuning.item_tokens import load_projection

        load_projection(resume, into=projection)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():  # with several GPUs only the first process writes
        if projection is not None:  # first: the adapter's config file is what marks the run done
            from training.tuning.item_tokens import save_projection

            save_projection(projection, adapter_dir)
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        (out_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return adapter_dir


def merge_adapter(base_model: Path, adapter_dir: Path, target: Path, item_tokens: ItemTokenSet | None = None) -> dict | None:
    """Fold the LoRA weights into the base model and save a plain HF folder (safetensors) vLLM serves.
    With `item_tokens`, the tokens and their projected rows go into its vocabulary; returns what the
    manifest records of them (None without)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    written = None
    if item_tokens is not None:
        from training.tuning.item_tokens import load_projection, write_item_rows

        written = write_item_rows(merged, tokenizer, item_tokens, load_projection(adapter_dir))
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return written


def thread_settings() -> None:
    """Use every core for the math; tokenizers' own pool would only compete with it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
