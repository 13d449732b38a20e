"""The ranking engine: score one user's backbone candidates with the LLM tasks.

All prompts of a request go out at once (asyncio.gather) and share the user's prompt prefix, so the
serving engine's prefix cache computes it once. Every task has to finish within the request's
deadline; a task that misses it, or whose LLM call fails, is dropped from the fusion and reported.
Individual malformed answers are repaired (missing items keep backbone order) and counted, never
silently neutral: `TaskOutcome.invalid_answers` counts the prompts whose answer was off the answer
format or carried a non-finite log-probability, one per prompt in every task, so a caller can judge a
task's answers as a whole (`invalid_share`); the gateway drops a task above its allowed share. The
engine knows the LLM only through the small `LLM` protocol below. It returns task utilities, not a
ranking: its callers add cached utilities and drop tasks by their own rules, then rank with
`fusion.fuse`, the one fusion.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.ranking.prompts import Candidate, Prompt, PromptConfig, UserProfile, listwise_prompt, pairwise_prompt, pointwise_prompt
from service.ranking.scoring import TaskScore, expected_rating, finite_logprobs, letter_probabilities, parse_listwise, yes_probability
from service.ranking.tasks import LISTWISE, PAIRWISE, POINTWISE, TASKS
from service.ranking.utilities import listwise_utility, pairwise_utility, pointwise_utility


class LLM(Protocol):
    async def next_token_logprobs(self, messages: list[dict[str, str]]) -> dict[str, float]: ...

    # optional: `next_token_logprobs_many(messages_list) -> list[dict]`, several prompts in one call

    async def generate(self, messages: list[dict[str, str]], max_tokens: int = 16, **extra) -> str: ...


@dataclass(frozen=True)
class EngineConfig:
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # "logprobs": one token, utility = P(first answer letter = candidate) renormalised over the
    # candidates' letters; "generate": the full answer, parsed, utility m - position.
    listwise_mode: str = "logprobs"
    listwise_max_tokens: int = 24


@dataclass
class TaskOutcome:
    task: str
    utility: np.ndarray | None = None  # None when the task was dropped
    prompts: int = 0
    invalid_answers: int = 0  # prompts whose answer was off format or non-finite, and was repaired
    seconds: float = 0.0
    error: str | None = None  # why the task was dropped: "deadline" or the LLM error
    detail: dict = field(default_factory=dict)

    @property
    def invalid_share(self) -> float:
        """The share of this task's prompts whose answer was invalid (0 for a task with none)."""
        return self.invalid_answers / self.prompts if self.prompts else 0.0


def _usable(score: TaskScore) -> float | None:
    """A prompt's score, or None when its answer is invalid (off format or not finite)."""
    return score.value if score.valid and math.isfinite(score.value) else None


@dataclass
class EngineResult:
    outcomes: dict[str, TaskOutcome]  # one per task asked for, dropped ones included

    @property
    def utilities(self) -> dict[str, np.ndarray]:
        return {t: o.utility for t, o in self.outcomes.items() if o.utility is not None}

    @property
    def dropped(self) -> dict[str, str]:
        return {t: o.error for t, o in self.outcomes.items() if o.error is not None}


def disjoint_pairs(m: int, seed: int) -> list[tuple[int, int]]:
    """m // 2 random disjoint pairs (PAPER.md); each is later asked in both orders."""
    order = list(range(m))
    random.Random(seed).shuffle(order)
    return [(order[k], order[k + 1]) for k in range(0, m - 1, 2)]


def pair_asks(m: int, seed: int) -> list[tuple[int, int]]:
    """The pairwise questions: each disjoint pair in both orders."""
    return [(i, j) for a, b in disjoint_pairs(m, seed) for i, j in ((a, b), (b, a))]


def task_prompts(task: str, user: UserProfile, cands: Sequence[Candidate], cfg: PromptConfig, seed: int = 0) -> list[Prompt]:
    """The prompts `RankingEngine.score` sends for one task, in its order (the probes and token
    counts use them too, so they measure what the engine sends)."""
    if task == POINTWISE:
        return [pointwise_prompt(user, c, cfg, n_candidates=len(cands)) for c in cands]
    if task == PAIRWISE:
        return [pairwise_prompt(user, cands[i], cands[j], cfg) for i, j in pair_asks(len(cands), seed)]
    if task == LISTWISE:
        return [listwise_prompt(user, cands, cfg)]
    raise ValueError(f"unknown task {task!r}")


def seed_for(user_key: str) -> int:
    """A stable per-user seed, so the same request gives the same pairs (and the same answer)."""
    return zlib.crc32(user_key.encode())


class RankingEngine:
    def __init__(self, llm: LLM, config: EngineConfig | None = None):
        self.llm = llm
        self.config = config or EngineConfig()

    async def _logprobs_of(self, prompts) -> list[dict[str, float]]:
        """One task's prompts at once: as one batched call where the LLM offers it."""
        many = getattr(self.llm, "next_token_logprobs_many", None)
        if many is not None:
            answers = list(await many([p.messages for p in prompts]))
        else:
            answers = list(await asyncio.gather(*(self.llm.next_token_logprobs(p.messages) for p in prompts)))
        if len(answers) != len(prompts):  # answers cannot be matched to prompts: the task fails
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
        return answers

    async def _pointwise(self, user: UserProfile, cands: Sequence[Candidate], out: TaskOutcome) -> None:
        prompts = task_prompts(POINTWISE, user, cands, self.config.prompt)
        out.prompts = len(prompts)
        answers = await self._logprobs_of(prompts)
        ratings = [_usable(expected_rating(lp, self.config.prompt.max_rating)) for lp in answers]
        util = pointwise_utility(ratings)  # one repair per invalid prompt: n_repaired counts prompts
        out.utility, out.invalid_answers = util.values, util.n_repaired
        out.detail = {"expected_rating": [None if r is None else round(r, 4) for r in ratings]}

    async def _pairwise(self, user: UserProfile, cands: Sequence[Candidate], seed: int, out: TaskOutcome) -> None:
        pairs, asks = disjoint_pairs(len(cands), seed), pair_asks(len(cands), seed)
        prompts = task_prompts(PAIRWISE, user, cands, self.config.prompt, seed)
        out.prompts = len(prompts)
        answers = await self._logprobs_of(prompts)
        probs = {(i, j): _usable(yes_probability(lp)) for (i, j), lp in zip(asks, answers, strict=True)}
        results = [(a, b, probs[(a, b)], probs[(b, a)]) for a, b in pairs]
        util = pairwise_utility(len(cands), results)
        # counted per prompt (each order of a pair is one), not per pair as util.n_invalid does
        out.utility, out.invalid_answers = util.values, sum(p is None for p in probs.values())
        out.detail = {"pairs": [[a, b, pa, pb] for a, b, pa, pb in results], "disagreements": util.n_disagree, "invalid_pairs": util.n_invalid}

    async def _listwise(self, user: UserProfile, cands: Sequence[Candidate], out: TaskOutcome) -> None:
        [prompt] = task_prompts(LISTWISE, user, cands, self.config.prompt)
        out.prompts = 1
        if self.config.listwise_mode == "logprobs":
            [answer] = await self._logprobs_of([prompt])
            probs = letter_probabilities(answer, len(cands)) if finite_logprobs(answer) else {}
            mass = sum(probs.values())
            valid = 0 < mass < math.inf
            utility = np.zeros(len(cands))  # an invalid answer: 0 for all, the backbone order
            for pos, p in probs.items() if valid else ():
                utility[prompt.candidate_order[pos]] = p / mass
            out.utility, out.invalid_answers = utility, int(not valid)
            out.detail = {"letter_mass": round(mass, 4) if math.isfinite(mass) else None}
            return
        text = await self.llm.generate(prompt.messages, max_tokens=self.config.listwise_max_tokens)
        top = min(self.config.prompt.listwise_top, len(cands))
        parsed = parse_listwise(text, len(cands), top)
        ranked = [prompt.candidate_order[p] for p in parsed.positions]
        # Missing items get utility 0 and so keep backbone order among themselves after fusion.
        out.utility = listwise_utility(len(cands), ranked)
        out.invalid_answers = int(not parsed.well_formed)
        out.detail = {"answer": text[:80], "ranked": ranked}

    async def score(
        self,
        user: UserProfile,
        candidates: Sequence[Candidate],
        *,
        tasks: Sequence[str] = TASKS,
        deadline_s: float | None = None,
        seed: int = 0,
    ) -> EngineResult:
        """Each task's utilities over the candidates, which must be in backbone order (index 0 =
        the backbone's best); a task late or failing has none and says why (`TaskOutcome.error`)."""
        outcomes = {t: TaskOutcome(task=t) for t in tasks}
        runners = {
            POINTWISE: lambda o: self._pointwise(user, candidates, o),
            PAIRWISE: lambda o: self._pairwise(user, candidates, seed, o),
            LISTWISE: lambda o: self._listwise(user, candidates, o),
        }

        async def timed(task: str) -> None:
            start = time.perf_counter()
            try:
                await runners[task](outcomes[task])
            finally:
                outcomes[task].seconds = time.perf_counter() - start

        jobs = {t: asyncio.ensure_future(timed(t)) for t in tasks}
        if jobs:
            done, pending = await asyncio.wait(jobs.values(), timeout=deadline_s)
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task, job in jobs.items():
            out = outcomes[task]
            if job.cancelled():
                out.error, out.utility = "deadline", None
            elif job.exception() is not None:
                out.error, out.utility = f"{type(job.exception()).__name__}: {job.exception()}", None
        return EngineResult(outcomes=outcomes)
