"""Collaborative item tokens on the training side: which items get a token, the learned projection
of the backbone's item vectors into the model's input embeddings, and the export of those rows.

Each item the hint backbone learned from (at least one like in the data it was fitted on) gets one
added token, `<item:ID>` (`service.ranking.item_tokens`). Its input embedding is not a free row: it
is `ItemProjection(vector)`, a small MLP of the backbone's item vector trained jointly with the LoRA
adapter, so items share what they learn through the backbone's geometry (CoLLM's and LLaRA's idea).
The MLP's output is rescaled to the mean norm of the model's word embeddings, so an item token is as
loud as a word whatever the vectors' scale.

Which vectors: the hint backbone's, in tuning and at export alike. The projection is fitted to that
backbone's coordinates, and two separately fitted LightGCNs share no coordinates (any rotation of
one fits as well), so applying it to the serving backbone's vectors would feed it a space it never
saw. The serving backbone's vectors would also leak in tuning: they were fitted on the target-period
likes the examples ask about, the very leak honest hints remove. An item's token is a fixed part of
the exported vocabulary, like its title; it does not follow later events either way.

Export (`write_item_rows`): the rows go into the merged model's input embedding matrix and the
tokenizer's added tokens, so vLLM serves plain token ids. SmolLM2 ties input and output embeddings;
an item token must never be an answer (scores come from the top log-probabilities of digits, Yes/No
and letters, which new tokens must not crowd out), so the export unties them: the words keep their
output rows and each item token's output row is minus the mean word output row. Its logit is then
minus the vocabulary's mean logit; SmolLM2's logits at the answer positions are all positive (1 to
32 on our prompts), so item tokens rank below every word (a test checks it on a served model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.ranking.item_tokens import ItemTokenTable, item_token
from training.data.split import Split

VECTOR_KINDS = ("real", "shuffled")
_SET_FILE, _VECTORS_FILE = "item_tokens.json", "item_vectors.npy"
_PROJECTION_FILE, _PROJECTION_CONFIG = "item_projection.safetensors", "item_projection.json"


@dataclass(frozen=True)
class ItemTokenSet:
    """The items with a token, in token order, and the vector each token is projected from."""

    item_ids: list[str]
    vectors: np.ndarray  # (len(item_ids), d) float32
    kind: str  # "real", or "shuffled": each item carries another item's vector (the ablation)
    source: str  # the backbone folder the vectors come from

    @property
    def tokens(self) -> list[str]:
        return [item_token(i) for i in self.item_ids]

    def table(self) -> ItemTokenTable:
        return ItemTokenTable(self.item_ids)

    def describe(self) -> dict:
        return {"count": len(self.item_ids), "vectors": self.kind, "dim": int(self.vectors.shape[1]), "source": self.source}

    def save(self, folder: Path) -> None:
        (folder / _SET_FILE).write_text(json.dumps({**self.describe(), "item_ids": self.item_ids}))
        np.save(folder / _VECTORS_FILE, self.vectors.astype(np.float32))

    @classmethod
    def load(cls, folder: Path) -> ItemTokenSet | None:
        """The set an instruction set was built with, or None for one without item tokens."""
        if not (folder / _SET_FILE).is_file():
            return None
        meta = json.loads((folder / _SET_FILE).read_text())
        return cls(meta["item_ids"], np.load(folder / _VECTORS_FILE), meta["vectors"], meta["source"])


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation with no fixed point (Sattolo's algorithm: one cycle through all n), so
    in the shuffled ablation no item keeps its own vector."""
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def build_item_token_set(split: Split, backbone_dir: Path, kind: str = "real", seed: int = 0) -> ItemTokenSet:
    """A token for every item liked at least once in `split` (the data the backbone in
    `backbone_dir` was fitted on), from that backbone's item vectors; `kind="shuffled"` permutes the
    vectors between those items."""
    if kind not in VECTOR_KINDS:
        raise ValueError(f"item vectors must be one of {', '.join(VECTOR_KINDS)}, got {kind!r}")
    _, liked = split.liked_pairs()
    seen = np.unique(liked)
    items = [int(i) for i in seen if item_token(split.dataset.items[int(i)].item_id) is not None]
    vectors = np.load(backbone_dir / "item_vectors.npy")[items].astype(np.float32)
    if kind == "shuffled":
        vectors = vectors[derangement(len(items), seed)]
    return ItemTokenSet([split.dataset.items[i].item_id for i in items], vectors, kind, str(backbone_dir))


def add_item_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add the tokens to a transformers tokenizer; their ids, in order. `lstrip`: the space before a
    token is part of it, so naming an item costs one token, not two."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=True) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(set(ids)) != len(tokens):
        raise ValueError("item tokens did not get one id each")
    return ids


class ItemProjection(nn.Module):
    """backbone item vector -> input embedding: standardise, MLP, rescale to the words' mean norm."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, mean, std, target_norm: float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("target_norm", torch.tensor(float(target_norm)))
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        out = self.mlp((vectors - self.mean) / self.std)
        return self.target_norm * nn.functional.normalize(out, dim=-1)


class ItemTokenEmbedding(nn.Module):
    """The model's input embedding with item tokens: words from the word table, item tokens from the
    projection of their vectors (gradients reach the projection)."""

    def __init__(self, words: nn.Embedding, projection: ItemProjection, vectors: np.ndarray, token_ids: list[int]):
        super().__init__()
        self.words, self.projection = words, projection
        self.register_buffer("vectors", torch.as_tensor(vectors, dtype=torch.float32), persistent=False)
        row_of = torch.full((max(words.num_embeddings, max(token_ids) + 1),), -1, dtype=torch.long)
        row_of[torch.tensor(token_ids)] = torch.arange(len(token_ids))
        self.register_buffer("row_of", row_of, persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # what code asking a model for its input embedding's weight gets
        return self.words.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.row_of[ids]
        words = self.words(torch.where(rows >= 0, 0, ids))
        items = self.projection(self.vectors)[rows.clamp(min=0)]
        return torch.where((rows >= 0).unsqueeze(-1), items.to(words.dtype), words)


def new_projection(token_set: ItemTokenSet, word_embeddings, seed: int):
    """An untrained projection for `token_set` into the space of `word_embeddings` (a weight matrix)."""
    torch.manual_seed(seed)
    vectors = token_set.vectors
    hidden = word_embeddings.shape[1]
    target_norm = float(word_embeddings.detach().float().norm(dim=1).mean())
    std = np.where(vectors.std(axis=0) > 0, vectors.std(axis=0), 1.0)
    return ItemProjection(vectors.shape[1], hidden, hidden, vectors.mean(axis=0), std, target_norm)


def install_item_embedding(model, projection, token_set: ItemTokenSet, token_ids: list[int]) -> None:
    """Make `model` (a transformers model, or a peft model around one) read item tokens through
    `projection`. Install after peft has injected LoRA, so the projection gets no adapter."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    words = base.get_input_embeddings()
    base.set_input_embeddings(ItemTokenEmbedding(words, projection.to(words.weight.device), token_set.vectors, token_ids))


def save_projection(projection, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}, str(folder / _PROJECTION_FILE))
    first, last = projection.mlp[0], projection.mlp[2]
    (folder / _PROJECTION_CONFIG).write_text(json.dumps({"in_dim": first.in_features, "hidden": first.out_features, "out_dim": last.out_features}))


def load_projection(folder: Path, into=None):
    """The projection saved in `folder`: into an existing module, or as a new one."""
    from safetensors.torch import load_file

    state = load_file(str(folder / _PROJECTION_FILE))
    if into is None:
        cfg = json.loads((folder / _PROJECTION_CONFIG).read_text())
        into = ItemProjection(cfg["in_dim"], cfg["out_dim"], cfg["hidden"], state["mean"], state["std"], float(state["target_norm"]))
    into.load_state_dict(state)
    return into


def projection_saver(projection):
    """A Trainer callback that keeps the projection beside each checkpoint's adapter (peft saves
    only the LoRA weights), so a resumed run continues from both."""
    from transformers import TrainerCallback

    class SaveProjection(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            save_projection(projection, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return SaveProjection()


def write_item_rows(model, tokenizer, token_set: ItemTokenSet, projection) -> dict:
    """Into a merged model and its tokenizer: the item tokens, their projected input rows, and
    untied output rows that keep them out of every answer (see the module docstring). Returns what
    the manifest records."""
    out_words = model.get_output_embeddings().weight.detach().float().clone()
    token_ids = add_item_tokens(tokenizer, token_set.tokens)
    size = max(out_words.shape[0], max(token_ids) + 1)
    is_word = torch.ones(size, dtype=torch.bool)
    is_word[torch.tensor(token_ids)] = False
    is_word[out_words.shape[0]:] = False
    with torch.no_grad():
        rows = projection(torch.as_tensor(token_set.vectors, dtype=torch.float32))
        model.resize_token_embeddings(size, mean_resizing=False)
        model.get_input_embeddings().weight[torch.tensor(token_ids)] = rows.to(model.get_input_embeddings().weight.dtype)
        head = nn.Linear(out_words.shape[1], size, bias=False, dtype=out_words.dtype)
        head.weight[: out_words.shape[0]] = out_words
        head.weight[~is_word] = -out_words[is_word[: out_words.shape[0]]].mean(dim=0)
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return {**token_set.describe(), "first_token_id": min(token_ids), "last_token_id": max(token_ids), "output_rows": "minus the mean word output row"}
