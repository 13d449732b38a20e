"""One rerank request from candidates to fused top-k: the gateway's request path.

Stages and their budget: history (read through the cache), retrieval (when no candidates are
given), cached task scores, the LLM tasks (whatever is left of the deadline), fusion. Any
dependency fault degrades the answer instead of failing it: Redis down -> the backing store,
an LLM task late, failing or answering garbage -> dropped from the fusion, no task left ->
the backbone order. `degraded_reasons` says which of these happened.

A task's answers are judged as a whole: one whose invalid answers (off format or non-finite, one per
prompt) exceed `max_invalid_answer_share` of its prompts is dropped (`llm_invalid_answers`); up to
that share they are repaired and counted in `repaired_answers`. Only a task answered in full, with
no invalid answer, is cached, so a fault is never served again from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.backbones.feature_source import LikedItem
from service.gateway.admission import LLMAdmission, Overloaded
from service.gateway.history import HistoryCache, ScoreCache, history_fingerprint
from service.gateway.metrics import GatewayMetrics
from service.gateway.policy_runtime import PolicyRuntime
from service.gateway.rejections import AtCapacity, InvalidInput, Unavailable, UnknownEntity
from service.gateway.retrieval import RetrievalError, Retriever
from service.gateway.schemas import RerankRequest, RerankResponse, RerankResult
from service.gateway.settings import GatewaySettings
from service.gateway.store import InteractionStore, UnknownItems
from service.ranking.engine import RankingEngine, seed_for
from service.ranking.fusion import Fused, fuse, rank_by
from service.ranking.policy import FEATURE_METHODS, LLM_METHODS
from service.ranking.profile import build_profile
from service.ranking.prompts import Candidate

log = logging.getLogger("recranker.rerank")

# Kept back from the LLM's share of the deadline for fusion, the reply and its way to the caller.
# (The bench's overload p99 stayed 4-7 ms over the 5 s deadline with 5 ms and with 25 ms: there the
# rest is the load generator's own lag on a saturated 2-core host, counted from scheduled starts.)
FUSION_RESERVE_S = 0.025


def servable_cached_utility(value: object, m: int) -> np.ndarray | None:
    """A cached task's utilities, or None for an entry not to serve: one with repaired answers
    (an earlier release cached partly repaired tasks), non-finite values or the wrong length."""
    try:
        utility = np.asarray(value["utility"], dtype=float)
        repaired = int(value.get("repaired", 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if repaired or utility.shape != (m,) or not np.isfinite(utility).all():
        return None
    return utility


@dataclass
class RequestTrace:
    clock: Callable[[], float] = time.perf_counter
    started: float = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def degrade(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def elapsed(self) -> float:
        return self.clock() - self.started


@dataclass
class RerankService:
    settings: GatewaySettings
    store: InteractionStore
    histories: HistoryCache
    scores: ScoreCache
    retriever: Retriever
    engine: RankingEngine
    metrics: GatewayMetrics
    model_name: str
    policy: PolicyRuntime | None = None  # None: an export without a policy; the hybrid is the default
    admission: LLMAdmission | None = None  # None: no admission control (every request waits)
    # What the deadline is measured on; the event loop's (virtual) time in tests, as the admission's
    clock: Callable[[], float] = time.perf_counter

    def _stage(self, trace: RequestTrace, stage: str, seconds: float) -> None:
        trace.timings[stage] = round(seconds * 1000, 3)
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    async def rerank(self, req: RerankRequest, request_id: str) -> RerankResponse:
        """history -> candidates -> task scores (cache, then engine) -> fuse -> respond."""
        trace = RequestTrace(self.clock)
        k, budget_s, method, tasks = self._check(req)
        history = await self._history(req.user_id, trace)
        item_ids = await self._candidates(req, history, budget_s, trace)
        catalog = [self.store.items[i] for i in item_ids]
        utilities, repaired = await self._task_utilities(req, tasks, history, catalog, budget_s, trace)
        t = self.clock()
        fused = self._fuse(req.user_id, method, utilities, history, catalog, trace)
        self._stage(trace, "fusion", self.clock() - t)
        return self._respond(req, request_id, item_ids, fused, k, utilities, repaired, trace)

    def method_and_tasks(self, req: RerankRequest) -> tuple[str, list[str]]:
        """What ranks this request and which LLM tasks it needs. Neither `fusion` nor `tasks` given:
        the policy's method and only the tasks it reads (none for a non-LLM method); `tasks` alone:
        the hybrid of those tasks ([] = the candidates' order), as before policies; `fusion` given:
        that method, with `tasks` or, for an LLM method, the default tasks."""
        if req.fusion is None:
            if req.tasks is None and self.policy is not None:
                return self.policy.policy.method, list(self.policy.policy.tasks)
            method = "hybrid"
        else:
            method = req.fusion
        default = self.settings.default_tasks if method in LLM_METHODS else ()
        return method, list(dict.fromkeys(req.tasks if req.tasks is not None else default))

    def _check(self, req: RerankRequest) -> tuple[int, float, str, list[str]]:
        """The request against the limits and the catalogue: (k, budget in seconds, method, tasks)."""
        s = self.settings
        # Above the limits is an error, not a silent cap: the caller learns what it will get.
        if req.k is not None and req.k > s.max_k:
            raise InvalidInput("k_too_large", f"k={req.k}; at most {s.max_k}", {"max_k": s.max_k})
        if req.deadline_ms is not None and req.deadline_ms > s.max_deadline_ms:
            raise InvalidInput("deadline_too_long", f"deadline_ms={req.deadline_ms}; at most {s.max_deadline_ms}", {"max_deadline_ms": s.max_deadline_ms})
        if not self.store.has_user(req.user_id):
            raise UnknownEntity("unknown_user", f"user {req.user_id!r} is not known to this gateway")
        if req.candidates is not None:
            if not req.candidates:
                raise InvalidInput("no_candidates", "candidates is empty; omit it to let the backbone retrieve them")
            if len(req.candidates) > s.max_candidates:
                raise InvalidInput("too_many_candidates", f"{len(req.candidates)} candidates; at most {s.max_candidates}", {"max_candidates": s.max_candidates})
            if len(set(req.candidates)) != len(req.candidates):
                raise InvalidInput("duplicate_candidates", "candidate ids must be unique")
            try:
                self.store.check_items(req.candidates)
            except UnknownItems as exc:
                raise InvalidInput("unknown_items", f"{len(exc.item_ids)} candidate ids are not in the catalogue", {"item_ids": exc.item_ids[:20]}) from None
        elif req.m is not None and req.m > s.max_candidates:
            raise InvalidInput("too_many_candidates", f"m={req.m}; at most {s.max_candidates}", {"max_candidates": s.max_candidates})
        method, tasks = self.method_and_tasks(req)
        return req.k or s.default_k, (req.deadline_ms or s.default_deadline_ms) / 1000, method, tasks

    async def _history(self, user_id: str, trace: RequestTrace) -> list:
        t = self.clock()
        read = await self.histories.get(user_id)
        self.metrics.cache_requests.labels("history", read.result).inc()
        trace.cache["history"] = read.result
        if read.result == "error":
            trace.degrade("cache_unavailable")
        self._stage(trace, "history", self.clock() - t)
        return read.value

    async def _candidates(self, req: RerankRequest, history, budget_s: float, trace: RequestTrace) -> list[str]:
        """The caller's candidates, or the backbone's top-m."""
        t = self.clock()
        if req.candidates is None:
            try:
                retrieved = await asyncio.wait_for(
                    self.retriever.top_m(req.user_id, req.m or self.settings.default_m, {e.item_id for e in history}),
                    timeout=max(0.001, budget_s - trace.elapsed()),
                )
            except (RetrievalError, TimeoutError) as exc:
                self._stage(trace, "retrieval", self.clock() - t)
                raise Unavailable("retrieval_unavailable", f"the retrieval backbone failed and no candidates were given: {exc}") from None
            item_ids = retrieved.item_ids
        else:
            item_ids = list(req.candidates)
        self._stage(trace, "retrieval", self.clock() - t)
        if not item_ids:
            raise InvalidInput("no_candidates", "the backbone returned no candidates for this user")
        return item_ids

    def _fuse(self, user_id: str, method: str, utilities, history, catalog, trace: RequestTrace) -> Fused:
        """`method` over the tasks that answered. A method that reads the feature backbones needs the
        policy's rankers; without them it degrades (`learned_fusion_unavailable`) to the hybrid.
        `Fused.method` names what ranked: the method, or "backbone" when an LLM method got no task."""
        m = len(catalog)
        runtime = self.policy
        if method in FEATURE_METHODS and (runtime is None or (method != "rank_mean_no_llm" and method not in runtime.models)):
            trace.degrade("learned_fusion_unavailable")
            method = "hybrid"
        if method == "backbone" or (method == "hybrid" and not utilities):
            return fuse(m, {})
        if method == "hybrid":
            return fuse(m, utilities, weights=self.settings.hybrid_weights)
        t = self.clock()
        liked = [LikedItem(e.item_id, e.genres) for e in history if e.rating >= self.store.liked_at_least and e.item_id is not None]
        inputs = runtime.inputs(user_id, liked, [c.item_id for c in catalog], [c.genres for c in catalog])
        self._stage(trace, "features", self.clock() - t)
        if method == "rank_mean_no_llm":
            scores = inputs.rank_mean()
            return Fused(scores=scores, order=rank_by(scores), method=method)
        fused = fuse(m, utilities if method == "learned" else {}, learned=runtime.models[method], backbone_scores=inputs.backbone_scores, extra=inputs.extra)
        return Fused(scores=fused.scores, order=fused.order, method=method)

    def _respond(self, req, request_id, item_ids, fused: Fused, k: int, utilities, repaired, trace: RequestTrace) -> RerankResponse:
        relevance = fused.relevance
        results = [
            RerankResult(item_id=item_ids[idx], index=idx, relevance_score=round(float(relevance[idx]), 6), backbone_rank=idx + 1,
                         scores={t_: round(float(u[idx]), 6) for t_, u in utilities.items()})
            for idx in fused.order[:k]
        ]
        for reason in trace.reasons:
            self.metrics.degraded.labels(reason).inc()
        self.metrics.methods.labels(fused.method).inc()
        trace.timings["total"] = round(trace.elapsed() * 1000, 3)
        return RerankResponse(
            request_id=request_id, user_id=req.user_id, model=self.model_name, fusion=fused.method, results=results,
            tasks_used=sorted(utilities), degraded=bool(trace.reasons), degraded_reasons=trace.reasons,
            repaired_answers=repaired, cache=trace.cache, timings_ms=trace.timings,
        )

    def llm_inputs(self, user_id: str, history, catalog) -> tuple:
        """The engine's inputs for this user and candidate list (in the backbone's order): the
        profile and the candidates with their backbone ranks."""
        profile = build_profile(history, self.store.liked_at_least, self.store.disliked_at_most, self.store.demographics(user_id))
        return profile, [Candidate(c.title, backbone_rank=i + 1, item_id=c.item_id) for i, c in enumerate(catalog)]

    async def _score_admitted(self, profile, candidates, tasks, budget_s: float, user_id: str):
        if self.admission is None:
            return await self.engine.score(profile, candidates, tasks=tasks, deadline_s=budget_s, seed=seed_for(user_id))
        async with self.admission.slot(budget_s) as left_s:  # it learns the scoring time itself
            return await self.engine.score(profile, candidates, tasks=tasks, deadline_s=left_s, seed=seed_for(user_id))

    async def _task_utilities(self, req, tasks, history, catalog, budget_s: float, trace: RequestTrace) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Utilities of the tasks that finished in time with usable answers, cached ones first."""
        if not tasks:
            return {}, {}
        item_ids = [c.item_id for c in catalog]
        fingerprint = history_fingerprint(history)
        keys = {t_: self.scores.key(self.model_name, req.user_id, fingerprint, item_ids, t_) for t_ in tasks}
        utilities: dict[str, np.ndarray] = {}
        repaired: dict[str, int] = {}
        missing = list(tasks)
        if req.use_cache:
            t = self.clock()
            reads = await asyncio.gather(*(self.scores.get(keys[t_]) for t_ in tasks))
            self._stage(trace, "result_cache", self.clock() - t)
            missing = []
            for task, read in zip(tasks, reads):
                cached = None if read.value is None else servable_cached_utility(read.value, len(item_ids))
                self.metrics.cache_requests.labels("result", "miss" if read.result == "hit" and cached is None else read.result).inc()
                if cached is not None:
                    utilities[task] = cached
                    repaired[task] = 0
                else:
                    missing.append(task)
            trace.cache["result"] = "hit" if not missing else ("miss" if len(missing) == len(tasks) else "partial")
            if any(r.result == "error" for r in reads):
                trace.degrade("cache_unavailable")
        if not missing:
            return utilities, repaired

        remaining = budget_s - trace.elapsed() - FUSION_RESERVE_S
        if remaining <= 0:
            for task in missing:
                self.metrics.llm_errors.labels(task, "deadline").inc()
            trace.degrade("llm_deadline")
            return utilities, repaired
        profile, candidates = self.llm_inputs(req.user_id, history, catalog)
        try:
            result = await self._score_admitted(profile, candidates, missing, remaining, req.user_id)
        except Overloaded as exc:
            if self.settings.overload_response == "reject":
                raise AtCapacity("overloaded", "the LLM is at capacity; retry", {"retry_after_s": round(exc.retry_after_s, 3)},
                                 retry_after_s=exc.retry_after_s) from None
            trace.degrade("overloaded")  # answered now, in the backbone order for the tasks it lacks
            return utilities, repaired
        writes = []
        for task in missing:
            out = result.outcomes[task]
            self.metrics.stage_seconds.labels(f"llm_{task}").observe(out.seconds)
            trace.timings[f"llm_{task}"] = round(out.seconds * 1000, 3)
            if out.error is not None:
                kind = "deadline" if out.error == "deadline" else "error"
                self.metrics.llm_errors.labels(task, kind).inc()
                trace.degrade("llm_deadline" if kind == "deadline" else "llm_unavailable")
                log.warning("llm task dropped", extra={"task": task, "error": out.error[:200]})
                continue
            repaired[task] = out.invalid_answers
            if out.invalid_answers:
                self.metrics.llm_repaired.labels(task).inc(out.invalid_answers)
            if out.utility is None or out.invalid_share > self.settings.max_invalid_answer_share or not np.isfinite(out.utility).all():
                self.metrics.llm_errors.labels(task, "invalid").inc()
                trace.degrade("llm_invalid_answers")
                log.warning("llm task dropped", extra={"task": task, "error": f"{out.invalid_answers} of {out.prompts} answers invalid"})
                continue
            utilities[task] = out.utility
            if req.use_cache and out.invalid_answers == 0:  # a partly repaired task is served, never cached
                writes.append(self.scores.put(keys[task], {"utility": [float(x) for x in out.utility], "repaired": 0}))
        await asyncio.gather(*writes)
        return utilities, repaired
