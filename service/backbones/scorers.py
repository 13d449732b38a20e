"""Backbone scores of one user's candidates, built per request from the exported artefacts and the
user's live history. The learned ranker's features come from here in `make eval` (fitting and the
test rows) and in the gateway alike, so a served ranking is the offline one.

Two kinds, chosen by the `scorer` the backbone's `config.json` records (by name for older exports):
- embedding backbones (MF, LightGCN, SGL, ...): score = user vector . item vector, from the exported
  `user_vectors.npy` / `item_vectors.npy` (users they were not fitted on get NaN);
- sequential backbones with a causal encoder (SASRec, CL4SRec, the LM-initialised SASRecs): the encoder (`sequence_encoder`, the
  module training fitted) reads the user's liked items in time order, as of now, and the last
  position's state . item embedding is the score. Events that arrived after training count.
Scores are float64 (dot products of the float32 tables), NaN where an item is not in the catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

CAUSAL_SEQUENCE = "causal_sequence"  # config.json's "scorer": the last-position state of a causal encoder
LEGACY_CAUSAL_SEQUENCE_BACKBONES = ("sasrec", "cl4srec")  # exports from before config.json named its scorer


class BackboneScorerError(RuntimeError):
    """A backbone folder this release cannot score with; the message names it and the fix."""


class BackboneScorer(Protocol):
    name: str

    def scores(self, user_id: str, liked_item_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(item_ids),) float64, higher is better; NaN where the backbone cannot score."""
        ...


def _rows(index: Mapping[str, int], item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    known = np.asarray([i in index for i in item_ids], dtype=bool)
    rows = np.asarray([index.get(i, 0) for i in item_ids], dtype=np.int64)
    return rows, known


@dataclass(frozen=True, eq=False)
class EmbeddingScorer:
    name: str
    user_vectors: np.ndarray  # (n_users, d) float32
    item_vectors: np.ndarray  # (n_items, d) float32
    user_index: Mapping[str, int]
    item_index: Mapping[str, int]

    def scores(self, user_id: str, liked_item_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        out = np.full(len(item_ids), np.nan)
        u = self.user_index.get(user_id)
        if u is None:
            return out
        rows, known = _rows(self.item_index, item_ids)
        out[known] = self.item_vectors[rows[known]].astype(np.float64) @ self.user_vectors[u].astype(np.float64)
        return out


@dataclass(frozen=True, eq=False)
class SequenceScorer:
    name: str
    encoder: object  # service.backbones.sequence_encoder.SequenceEncoder in eval mode
    item_vectors: np.ndarray  # (n_items, d) the encoder's item table
    max_len: int
    item_index: Mapping[str, int]

    def state(self, liked_item_ids: Sequence[str]) -> np.ndarray:
        """The encoder's last-position state after the user's liked items (oldest first)."""
        import torch

        from service.backbones.sequence_encoder import to_tokens

        history = np.asarray([self.item_index[i] for i in liked_item_ids if i in self.item_index], dtype=np.int64)
        with torch.inference_mode():
            return self.encoder(torch.from_numpy(to_tokens([history], self.max_len)))[0, -1].numpy().astype(np.float64)

    def scores(self, user_id: str, liked_item_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        out = np.full(len(item_ids), np.nan)
        rows, known = _rows(self.item_index, item_ids)
        out[known] = self.item_vectors[rows[known]].astype(np.float64) @ self.state(liked_item_ids)
        return out


def load_scorer(folder: Path, user_ids: Sequence[str], item_ids: Sequence[str]) -> BackboneScorer:
    """The scorer of the backbone exported in `folder`; `user_ids` / `item_ids` are the serving
    tables' ids in the dense order the backbone was fitted on."""
    fix = "retrain it with `python -m training backbone --name NAME` (or `make eval`)"
    try:
        meta = json.loads((folder / "config.json").read_text())
        name = meta["backbone"]
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneScorerError(f"{folder}: no readable backbone config ({type(exc).__name__}: {exc}); {fix}") from None
    item_index = {item: i for i, item in enumerate(item_ids)}
    if meta.get("scorer", CAUSAL_SEQUENCE if name in LEGACY_CAUSAL_SEQUENCE_BACKBONES else "embedding") == CAUSAL_SEQUENCE:
        return _load_sequence(folder, name, meta, item_index, len(item_ids), fix)
    try:
        users, items = np.load(folder / "user_vectors.npy"), np.load(folder / "item_vectors.npy")
    except (OSError, ValueError) as exc:
        raise BackboneScorerError(f"{folder}: no readable vectors ({exc}); {fix}") from None
    if users.shape[0] != len(user_ids) or items.shape[0] != len(item_ids):
        raise BackboneScorerError(f"{folder}: vectors for {users.shape[0]} users / {items.shape[0]} items, the serving tables hold "
                                  f"{len(user_ids)} / {len(item_ids)}; {fix}")
    return EmbeddingScorer(name, users.astype(np.float32), items.astype(np.float32), {u: i for i, u in enumerate(user_ids)}, item_index)


def _load_sequence(folder: Path, name: str, meta: dict, item_index: dict[str, int], n_items: int, fix: str) -> SequenceScorer:
    import torch

    from service.backbones.sequence_encoder import SequenceEncoder

    cfg = meta.get("config") or {}
    try:
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        shape = _Shape(int(cfg["max_len"]), int(cfg["dim"]), int(cfg["layers"]), int(cfg["heads"]), float(cfg.get("dropout", 0.0)))
        encoder = SequenceEncoder(int(state["item_emb.weight"].shape[0]), shape, causal=True)
        encoder.load_state_dict(state)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BackboneScorerError(f"{folder}: not a {name} encoder this release reads ({type(exc).__name__}: {str(exc)[:200]}); {fix}") from None
    encoder.eval()
    table = encoder.item_table(n_items).detach().numpy().astype(np.float32)
    if meta.get("n_items") != n_items:
        raise BackboneScorerError(f"{folder}: fitted on {meta.get('n_items')} items, the serving tables hold {n_items}; {fix}")
    return SequenceScorer(name, encoder, table, shape.max_len, item_index)


@dataclass(frozen=True)
class _Shape:
    max_len: int
    dim: int
    layers: int
    heads: int
    dropout: float
