"""LoRA instruction tuning (peft + TRL's SFTTrainer) and the profiles it runs under.

Loss is on the answer only: examples are in TRL's prompt-completion form, for which SFTTrainer masks
the prompt tokens. Checkpoints go to `<run>/checkpoints`; a rerun resumes from the last one.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict


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


PROFILES: dict[str, TuneProfile] = {
    # 2 CPU cores, under 30 minutes of tuning. Short histories keep examples near 220-330 tokens.
    "cpu": TuneProfile(name="cpu", n_draws=600, max_liked=10, max_disliked=3, epochs=1.0, batch_size=8),
    # One or more GPUs (bf16): the paper's scale of draws and full histories.
    "gpu": TuneProfile(name="gpu", n_draws=5000, max_liked=50, max_disliked=10, epochs=2.0, batch_size=16, learning_rate=5e-4, max_length=1024, save_steps=200),
    # For tests: a handful of steps.
    "tiny": TuneProfile(name="tiny", n_draws=12, max_liked=5, max_disliked=2, max_steps=3, batch_size=4, valid_users_min=4, valid_share=0.01, save_steps=2),
}


def last_checkpoint(folder: Path) -> Path | None:
    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def train_lora(base_model: Path, train_rows: list[dict], out_dir: Path, profile: TuneProfile) -> Path:
    """Tune a LoRA adapter on `train_rows`; return the folder holding the final adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    adapter_dir = out_dir / "adapter"
    if (adapter_dir / "adapter_config.json").is_file():
        return adapter_dir
    use_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if (use_gpu and profile.bf16) else torch.float32)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in train_rows])
    ckpt_dir = out_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        num_train_epochs=profile.epochs,
        max_steps=profile.max_steps,
        warmup_steps=profile.warmup_ratio,  # a float below 1 is a share of all steps
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
        bf16=profile.bf16,
        use_cpu=not use_gpu,
        # Activations of a 135M model fit easily; recomputing them would cost ~30% more time.
        gradient_checkpointing=False,
        logging_steps=5,
        save_steps=profile.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=profile.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    lora = LoraConfig(
        r=profile.lora_r,
        lora_alpha=profile.lora_alpha,
        lora_dropout=profile.lora_dropout,
        target_modules=profile.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    resume = last_checkpoint(ckpt_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    (out_dir / "train_log.json").write_text(__import__("json").dumps(trainer.state.log_history, indent=1))
    return adapter_dir


def merge_adapter(base_model: Path, adapter_dir: Path, target: Path) -> None:
    """Fold the LoRA weights into the base model and save a plain HF folder (safetensors) vLLM serves."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(target)


def thread_settings() -> None:
    """Use every core for the math; tokenizers' own pool would only compete with it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
