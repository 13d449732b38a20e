"""Token ids of rendered prompts, laid out for vLLM's prefix cache.

vLLM reuses cached keys and values in whole blocks only (32 tokens here: the CPU backend takes no
smaller size). A task's prompts share the user block and the question's first line, but both end
mid-block, so every prompt after the first recomputed up to 31 shared tokens on top of its own tail.
Newline tokens after each shared part, up to the next block boundary, leave each later prompt only
its own tail to compute: 1,012 prompt tokens per user instead of 1,145 (m=10, 10 liked / 3 disliked
items; `python -m training.evaluation.token_table`), and vLLM's own counters agree (a test checks them).

The model reads those newlines, so it is tuned on the same layout: training encodes its prompts here
too, and the prompt config the model's manifest records says which block size it learned
(`PromptConfig.token_block`; 0 for models tuned before the layout, which are encoded plainly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.ranking.prompts import QUESTION_HEADING


def block_boundaries(text: str) -> list[int]:
    """Character offsets where a new KV block should start: where the user block ends (a user's
    prompts of all tasks share what comes before) and after the question's first line (a task's
    prompts share that too)."""
    at = text.rfind(QUESTION_HEADING)
    if at < 0:
        return []
    line_end = text.find("\n", at + len(QUESTION_HEADING))
    return [at] if line_end < 0 else [at, line_end + 1]


@dataclass(frozen=True)
class PromptEncoder:
    encode_text: Callable[[str], list[int]]  # the tokenizer, no special tokens added
    pad_id: int
    block: int  # tokens per KV block to align to; 0 = plain encoding

    @classmethod
    def from_hf_tokenizer(cls, tokenizer, block: int) -> PromptEncoder:
        """From a transformers tokenizer (training, evaluation)."""
        return cls.from_function(lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]), block)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, block: int) -> PromptEncoder | None:
        """From the model folder's `tokenizer.json` (the gateway loads no transformers), or None
        when the folder has none."""
        file = Path(model_dir) / "tokenizer.json"
        if not file.is_file():
            return None
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(file))
        return cls.from_function(lambda s: tokenizer.encode(s, add_special_tokens=False).ids, block)

    @classmethod
    def from_function(cls, encode_text: Callable[[str], list[int]], block: int) -> PromptEncoder:
        """From any text -> token ids function; the newline must be one token (it is the padding)."""
        if block < 0:
            raise ValueError(f"token block must be >= 0, got {block}")
        newline = encode_text("\n")
        if len(newline) != 1:
            raise ValueError(f"the tokenizer splits a newline into {len(newline)} tokens; it cannot pad to blocks")
        return cls(encode_text, newline[0], block)

    def encode(self, text: str) -> list[int]:
        return self._encode(text, {})

    def _encode(self, text: str, seen: dict[str, list[int]]) -> list[int]:
        if self.block == 0:
            return self.encode_text(text)
        ids: list[int] = []
        start = 0
        for cut in [*block_boundaries(text), len(text)]:
            segment = text[start:cut]
            if segment not in seen:
                seen[segment] = self.encode_text(segment)
            ids += seen[segment]
            if cut < len(text):
                ids += [self.pad_id] * (-len(ids) % self.block)
            start = cut
        return ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text; the segments a task's prompts share (the user block, the
        question line) are tokenized once, which keeps the gateway's share of the CPU small."""
        segments: dict[str, list[int]] = {}
        return [self._encode(t, segments) for t in texts]


def encoder_for_model(model_dir: str | Path, block: int) -> PromptEncoder | None:
    """The encoder for the block layout a model was tuned on (its prompt config's `token_block`);
    None for a model tuned without one, whose prompts go as text."""
    if not block:
        return None
    encoder = PromptEncoder.from_model_dir(model_dir, block)
    if encoder is None:
        logging.getLogger("recranker").warning("%s has no tokenizer.json: prompts go without the block layout the model was tuned on", model_dir)
    return encoder
