"""Collaborative item tokens on the serving side: which catalogue items the model has a vocabulary
token for, and what that token reads.

A model tuned with item tokens (`PromptConfig.item_tokens` "beside" or "only") has one added token
per item, `<item:ID>`, whose input embedding the export wrote from the backbone's item vector. The
model folder's tokenizer is the one source of truth for which items have one: the table is read
from its added tokens, never rebuilt from the catalogue, so an item added after the export (or one
the hint backbone never saw) has no token and its prompt lines carry the title alone.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from service.ranking.prompts import PromptConfig

# Ids that can sit inside a token: anything else (spaces, angle brackets) gets no token and falls
# back to the title. "<item:" is no prefix of SmolLM2's own added tokens (`<issue_closed>` and the like).
_ITEM_ID = r"[A-Za-z0-9._\-]+"
_TOKEN = re.compile(rf"<item:({_ITEM_ID})>")


def item_token(item_id: str) -> str | None:
    """The vocabulary token of an item id, or None when the id cannot be one."""
    token = f"<item:{item_id}>"
    return token if _TOKEN.fullmatch(token) else None


class ItemTokenTable(Mapping[str, str]):
    """item id -> its token, for the items the model has one for."""

    def __init__(self, item_ids: Iterable[str]):
        tokens = {}
        for item_id in item_ids:
            token = item_token(item_id)
            if token is None:
                raise ValueError(f"item id {item_id!r} cannot be an item token (allowed: {_ITEM_ID})")
            tokens[item_id] = token
        self._tokens = tokens

    @classmethod
    def from_tokenizer_file(cls, path: str | Path) -> ItemTokenTable:
        """The items whose token is among the tokenizer's added tokens (`tokenizer.json`)."""
        added = json.loads(Path(path).read_text()).get("added_tokens", [])
        return cls(m.group(1) for a in sorted(added, key=lambda a: a["id"]) if (m := _TOKEN.fullmatch(a.get("content", ""))))

    def __getitem__(self, item_id: str) -> str:
        return self._tokens[item_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"ItemTokenTable({len(self)} items)"


class ItemTokensError(ValueError):
    """A model tuned with item tokens whose folder does not say which items have one."""


def attach_token_table(cfg: PromptConfig, model_dir: str | Path) -> PromptConfig:
    """`cfg` (a model's recorded prompt config) with the token table of the model in `model_dir`,
    so prompts name items as the model was tuned to read them. A config without item tokens is
    returned as it is."""
    if cfg.item_tokens == "off":
        return cfg
    file = Path(model_dir) / "tokenizer.json"
    if not file.is_file():
        raise ItemTokensError(f"{file}: missing; the model was tuned with item tokens ({cfg.item_tokens}) and its tokenizer holds their table")
    table = ItemTokenTable.from_tokenizer_file(file)
    if not table:
        raise ItemTokensError(f"{file}: no <item:ID> tokens, but the model's prompt config asks for item tokens ({cfg.item_tokens})")
    return dataclasses.replace(cfg, token_table=table)


def prompt_config_of_model(model_dir: str | Path, recorded: dict) -> PromptConfig:
    """The prompt config a model was tuned with, from its manifest's `prompt_config`, ready to
    build prompts (the token table attached when it uses item tokens)."""
    return attach_token_table(PromptConfig(**recorded), model_dir)
