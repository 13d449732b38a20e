"""Prompt builders for the three RecRanker tasks (pointwise, pairwise, listwise).

Layout decision: every prompt of one user starts with the same system message and the same user
block (role, profile, liked and disliked history in one fixed order). The question paragraph then
puts the words that are the same for every prompt of a task (the question and the answer format)
before the few that differ (the candidate titles and their backbone hint). So a serving engine with
prefix caching computes the user block once per user and each task's question once per task; per
prompt only the candidate line and the chat template's closing tokens are new.

Answers are one short token sequence scored from token probabilities:
  pointwise -> one rating digit, pairwise -> "Yes" / "No", listwise -> candidate letters "C, A, E".
Position shifting (shuffled history and candidate order, pairs in both orders) is the caller's
choice through `shuffle_rng`; serving passes none and keeps the given order.

Collaborative item tokens (`PromptConfig.item_tokens`): a model tuned with them has one vocabulary
token per item (`<item:ID>`, see `service.ranking.item_tokens`), and every history and candidate line
names the item by it, beside the title ("beside") or instead of it ("only"). An item without a token
in the config's table (added after the export) is named by its title alone, in every mode.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

LETTERS = string.ascii_uppercase
MAX_TITLE_CHARS = 120
_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>|`\"#]+")
_SPACES = re.compile(r"\s+")
# Between the user block and a task's question; `service.llm.prompt_tokens` aligns KV blocks at it.
# Titles cannot contain it: sanitize_title removes "#" and newlines.
QUESTION_HEADING = "\n\n## Question\n"
# "off": titles only; "beside": the item's token, then its title; "only": the token alone.
ITEM_TOKEN_MODES = ("off", "beside", "only")


def sanitize_title(title: str) -> str:
    """Make an item title safe to quote: no newlines, control chars, quotes or chat-template markup
    (`<|im_start|>` and the like), bounded length. Titles come from catalogues we don't control."""
    clean = _SPACES.sub(" ", _UNSAFE.sub(" ", title)).strip()
    if len(clean) > MAX_TITLE_CHARS:
        clean = clean[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return clean or "untitled"


@dataclass(frozen=True)
class RatedItem:
    title: str
    rating: float
    item_id: str | None = None  # names the item's token, where the model has one


@dataclass(frozen=True)
class UserProfile:
    """What a prompt may say about a user: training-period history only (the caller guarantees it)."""

    liked: Sequence[RatedItem]  # time order, most recent last
    disliked: Sequence[RatedItem] = ()
    age: int | str | None = None  # years, or a band such as "18-24" (ML-1M)
    gender: str | None = None
    occupation: str | None = None


@dataclass(frozen=True)
class Candidate:
    title: str
    backbone_rank: int | None = None  # 1-based rank in the retrieval backbone's list, the hint
    item_id: str | None = None  # names the item's token, where the model has one


@dataclass(frozen=True)
class PromptConfig:
    domain: str = "movie"  # "movie" or "book": the role and wording
    max_rating: int = 5
    max_liked: int = 50
    max_disliked: int = 10
    with_hints: bool = True
    # The pointwise rank hint alone can be turned off: a reproduction of RecRanker found the paper's
    # pointwise hint leaked the answer, so it is a variant of its own.
    with_pointwise_hint: bool = True
    with_features: bool = True
    listwise_top: int = 5
    # KV-block size the prompts' token ids are padded to (service/llm/prompt_tokens.py); part of
    # what a model learned, so its manifest records it. 0: plain encoding (models tuned before it).
    token_block: int = 0
    # Collaborative item tokens (ITEM_TOKEN_MODES); also part of what a model learned.
    item_tokens: str = "off"
    # item id -> token of the model's items (service.ranking.item_tokens.attach_token_table). Not a
    # setting but the model's vocabulary: kept out of the manifest's record (`to_dict`).
    token_table: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.item_tokens not in ITEM_TOKEN_MODES:
            raise ValueError(f"item_tokens is {self.item_tokens!r}; expected one of {', '.join(ITEM_TOKEN_MODES)}")

    def to_dict(self) -> dict:
        """What a manifest records; `PromptConfig(**d)` reads it back (without the token table)."""
        record = asdict(replace(self, token_table=None))
        del record["token_table"]
        return record

    def token_of(self, item_id: str | None) -> str | None:
        """The token an item is named by in these prompts, or None (title alone)."""
        if self.item_tokens == "off" or item_id is None:
            return None
        if self.token_table is None:
            raise ValueError(f"prompt config asks for item tokens ({self.item_tokens}) but has no token table (service.ranking.item_tokens.attach_token_table)")
        return self.token_table.get(item_id)


@dataclass(frozen=True)
class Prompt:
    task: str
    messages: list[dict[str, str]]
    # Pairwise: order of the two candidates; listwise: candidate indices in letter order.
    candidate_order: tuple[int, ...] = field(default_factory=tuple)

    @property
    def shared_prefix(self) -> str:
        """The part identical for every prompt of one user (system message and history block)."""
        return self.messages[0]["content"] + "\n" + self.messages[1]["content"].split(QUESTION_HEADING, 1)[0]


def _profile_line(user: UserProfile) -> str | None:
    """An age in years reads "a 25-year-old ..."; an age band (ML-1M's "18-24", "56+") "... aged 18-24"."""
    parts = []
    if isinstance(user.age, int):
        parts.append(f"{user.age}-year-old")
    if user.gender:
        parts.append({"M": "male", "F": "female"}.get(user.gender, user.gender))
    if user.occupation and user.occupation not in ("other", "none"):
        parts.append(user.occupation)
    band = f"aged {user.age}" if isinstance(user.age, str) and user.age else None
    if parts:
        return "The user is a " + " ".join(parts) + (f" {band}." if band else ".")
    return f"The user is {band}." if band else None


def _name(title: str, item_id: str | None, cfg: PromptConfig, quoted: bool) -> str:
    """How a prompt names an item: its title (quoted in questions), with or as its item token."""
    token = cfg.token_of(item_id)
    title = f'"{sanitize_title(title)}"' if quoted else sanitize_title(title)
    if token is None:
        return title
    return token if cfg.item_tokens == "only" else f"{token} {title}"


def _titles(items: Sequence[RatedItem], cfg: PromptConfig) -> str:
    return "; ".join(f"{_name(it.title, it.item_id, cfg, quoted=False)} ({it.rating:g})" for it in items) or "(none)"


def _shared_block(user: UserProfile, cfg: PromptConfig, rng: random.Random | None) -> list[dict[str, str]]:
    noun = cfg.domain + "s"
    liked = list(user.liked)[-cfg.max_liked :]
    disliked = list(user.disliked)[-cfg.max_disliked :]
    if rng is not None:  # position shifting: the model must not learn that order means anything
        rng.shuffle(liked)
        rng.shuffle(disliked)
    system = (
        f"You are a {cfg.domain} recommender. From a user's history you judge which {noun} the user "
        f"will enjoy. Reply in exactly the format asked for, with nothing else."
    )
    lines = ["# User"]
    profile = _profile_line(user) if cfg.with_features else None
    if profile:
        lines.append(profile)
    lines.append(f"{noun.capitalize()} the user liked (rating out of {cfg.max_rating}): {_titles(liked, cfg)}")
    lines.append(f"{noun.capitalize()} the user disliked: {_titles(disliked, cfg)}")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def _with_question(shared: list[dict[str, str]], question: str) -> list[dict[str, str]]:
    return [shared[0], {"role": "user", "content": shared[1]["content"] + QUESTION_HEADING + question}]


def pointwise_prompt(user: UserProfile, candidate: Candidate, cfg: PromptConfig = PromptConfig(), shuffle_rng: random.Random | None = None, n_candidates: int | None = None) -> Prompt:
    shared = _shared_block(user, cfg, shuffle_rng)
    hinted = cfg.with_hints and cfg.with_pointwise_hint and candidate.backbone_rank is not None
    question = f"How would the user rate the {cfg.domain} below? Answer with one digit from 1 to {cfg.max_rating}."
    if hinted:
        question += " In brackets: its rank by a conventional recommender for this user."
    question += f"\n{cfg.domain.capitalize()}: {_name(candidate.title, candidate.item_id, cfg, quoted=True)}"
    if hinted:
        of = f" of {n_candidates}" if n_candidates else ""
        question += f" [#{candidate.backbone_rank}{of}]"
    return Prompt("pointwise", _with_question(shared, question), (0,))


def pairwise_prompt(user: UserProfile, a: Candidate, b: Candidate, cfg: PromptConfig = PromptConfig(), shuffle_rng: random.Random | None = None) -> Prompt:
    shared = _shared_block(user, cfg, shuffle_rng)
    question = f"Would the user prefer {cfg.domain} A over {cfg.domain} B? Answer Yes or No."
    question += f"\nA: {_name(a.title, a.item_id, cfg, quoted=True)}\nB: {_name(b.title, b.item_id, cfg, quoted=True)}"
    if cfg.with_hints and a.backbone_rank is not None and b.backbone_rank is not None:
        better = "A" if a.backbone_rank < b.backbone_rank else "B"
        question += f"\nA conventional recommender prefers {better}."
    return Prompt("pairwise", _with_question(shared, question), (0, 1))


def listwise_prompt(user: UserProfile, candidates: Sequence[Candidate], cfg: PromptConfig = PromptConfig(), shuffle_rng: random.Random | None = None) -> Prompt:
    if not 1 <= len(candidates) <= len(LETTERS):
        raise ValueError(f"listwise needs 1 to {len(LETTERS)} candidates, got {len(candidates)}")
    shared = _shared_block(user, cfg, shuffle_rng)
    order = list(range(len(candidates)))
    if shuffle_rng is not None:
        shuffle_rng.shuffle(order)
    top = min(cfg.listwise_top, len(candidates))
    example = ", ".join(LETTERS[:top][::-1]) if top > 1 else "A"
    lines = [
        f"Which {top} of the candidate {cfg.domain}s will the user like most, best first? "
        f"Answer with {top} letters separated by commas, like: {example}",
        f"Candidate {cfg.domain}s:",
    ]
    lines += [f"{LETTERS[pos]}. {_name(candidates[idx].title, candidates[idx].item_id, cfg, quoted=False)}" for pos, idx in enumerate(order)]
    ranked = [pos for pos, idx in sorted(enumerate(order), key=lambda p: candidates[p[1]].backbone_rank or 10**9)]
    if cfg.with_hints and all(c.backbone_rank is not None for c in candidates):
        lines.append(f"A conventional recommender's top {top}: " + ", ".join(LETTERS[p] for p in ranked[:top]) + ".")
    return Prompt("listwise", _with_question(shared, "\n".join(lines)), tuple(order))


def listwise_answer(letters_in_order: Sequence[int]) -> str:
    return ", ".join(LETTERS[p] for p in letters_in_order)
