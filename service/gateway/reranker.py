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
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from service.gateway.admission import LLMAdmission, Overloaded
from service.gateway.errors import ApiError
from service.gateway.history import HistoryCache, ScoreCache, history_fingerprint
from service.gateway.metrics import GatewayMetrics
from service.gateway.retrieval import RetrievalError, Retriever
from service.gateway.schemas import RerankRequest, RerankResponse, RerankResult
from service.gateway.settings import GatewaySettings
from service.gateway.store import InteractionStore, UnknownItems
from service.ranking.engine import RankingEngine, seed_for
from service.ranking.features import CandidateContext, non_llm_features
from service.ranking.fusion import FusionFeatures, LearnedFusion, feature_matrix, fusion_model_path, hybrid_scores, rank_by
from service.ranking.profile import build_profile
from service.ranking.prompts import Candidate

log = logging.getLogger("recranker.rerank")

FUSION_RESERVE_S = 0.005  # kept back from the LLM's share of the deadline for fusion and the reply


def fusion_features(m: int, utilities: dict[str, np.ndarray], backbone: str, backbone_scores: list[float] | None, ctx: CandidateContext) -> FusionFeatures:
    """The learned fusion's input as the gateway can build it: its own backbone's scores only."""
    scores = None if backbone_scores is None else np.asarray(backbone_scores, dtype=float)
    ctx = replace(ctx, backbone_scores={backbone: scores} if scores is not None else {backbone: np.full(m, np.nan)})
    return feature_matrix(
        m, pointwise=utilities.get("pointwise"), pairwise=utilities.get("pairwise"), listwise=utilities.get("listwise"),
        backbone_scores=scores, extra=non_llm_features(ctx),
    )


def load_learned_fusions(model_dir: Path, backbone: str) -> dict[int, LearnedFusion]:
    """{m: model} of the fusions with LLM features that `make eval` saved in <model_dir>/fusion
    (`fusion_model_path`). A model fitted on features the gateway cannot build (other backbones'
    scores) is skipped with a warning: requests for it then degrade to the hybrid."""
    folder = model_dir / "fusion"
    servable = fusion_features(1, {}, backbone, [0.0], CandidateContext([], [()], [0])).names
    out = {}
    for path in sorted(folder.glob(f"{backbone}-m*.lgb")):
        match = re.fullmatch(rf"{re.escape(backbone)}-m(\d+)-.*\.lgb", path.name)
        if match and path == fusion_model_path(folder, backbone, int(match.group(1))):
            model = LearnedFusion.load(path)
            if model.feature_names_ != servable:
                log.warning("learned fusion %s was fitted on features %s, the gateway builds %s; not loaded", path, model.feature_names_, servable)
                continue
            out[int(match.group(1))] = model
    return out


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
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)

    def degrade(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


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
    learned: dict[int, LearnedFusion] = field(default_factory=dict)
    admission: LLMAdmission | None = None  # None: no admission control (every request waits)

    def _stage(self, trace: RequestTrace, stage: str, seconds: float) -> None:
        trace.timings[stage] = round(seconds * 1000, 3)
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    async def rerank(self, req: RerankRequest, request_id: str) -> RerankResponse:
        """history -> candidates -> task scores (cache, then engine) -> fuse -> respond."""
        trace = RequestTrace()
        k, budget_s, tasks = self._check(req)
        history = await self._history(req.user_id, trace)
        item_ids, backbone_scores = await self._candidates(req, history, budget_s, trace)
        catalog = [self.store.items[i] for i in item_ids]
        utilities, repaired = await self._task_utilities(req, tasks, history, catalog, budget_s, trace)
        t = time.perf_counter()
        fused, fusion_used = self._fuse(req, utilities, history, catalog, backbone_scores, trace)
        order = rank_by(fused)
        self._stage(trace, "fusion", time.perf_counter() - t)
        return self._respond(req, request_id, item_ids, fused, order[:k], utilities, repaired, fusion_used, trace)

    def _check(self, req: RerankRequest) -> tuple[int, float, list[str]]:
        """The request against the limits and the catalogue: (k, budget in seconds, tasks)."""
        s = self.settings
        # Above the limits is an error, not a silent cap: the caller learns what it will get.
        if req.k is not None and req.k > s.max_k:
            raise ApiError(422, "k_too_large", f"k={req.k}; at most {s.max_k}", {"max_k": s.max_k})
        if req.deadline_ms is not None and req.deadline_ms > s.max_deadline_ms:
            raise ApiError(422, "deadline_too_long", f"deadline_ms={req.deadline_ms}; at most {s.max_deadline_ms}", {"max_deadline_ms": s.max_deadline_ms})
        if not self.store.has_user(req.user_id):
            raise ApiError(404, "unknown_user", f"user {req.user_id!r} is not known to this gateway")
        if req.candidates is not None:
            if not req.candidates:
                raise ApiError(422, "no_candidates", "candidates is empty; omit it to let the backbone retrieve them")
            if len(req.candidates) > s.max_candidates:
                raise ApiError(422, "too_many_candidates", f"{len(req.candidates)} candidates; at most {s.max_candidates}", {"max_candidates": s.max_candidates})
            if len(set(req.candidates)) != len(req.candidates):
                raise ApiError(422, "duplicate_candidates", "candidate ids must be unique")
            try:
                self.store.check_items(req.candidates)
            except UnknownItems as exc:
                raise ApiError(422, "unknown_items", f"{len(exc.item_ids)} candidate ids are not in the catalogue", {"item_ids": exc.item_ids[:20]}) from None
        elif req.m is not None and req.m > s.max_candidates:
            raise ApiError(422, "too_many_candidates", f"m={req.m}; at most {s.max_candidates}", {"max_candidates": s.max_candidates})
        tasks = list(dict.fromkeys(req.tasks if req.tasks is not None else s.default_tasks))
        return req.k or s.default_k, (req.deadline_ms or s.default_deadline_ms) / 1000, tasks

    async def _history(self, user_id: str, trace: RequestTrace) -> list:
        t = time.perf_counter()
        read = await self.histories.get(user_id)
        self.metrics.cache_requests.labels("history", read.result).inc()
        trace.cache["history"] = read.result
        if read.result == "error":
            trace.degrade("cache_unavailable")
        self._stage(trace, "history", time.perf_counter() - t)
        return read.value

    async def _candidates(self, req: RerankRequest, history, budget_s: float, trace: RequestTrace) -> tuple[list[str], list[float] | None]:
        """The caller's candidates (scored by the backbone where it can), or the backbone's top-m."""
        t = time.perf_counter()
        if req.candidates is None:
            try:
                retrieved = await asyncio.wait_for(
                    self.retriever.top_m(req.user_id, req.m or self.settings.default_m, {e.item_id for e in history}),
                    timeout=max(0.001, budget_s - trace.elapsed()),
                )
            except (RetrievalError, TimeoutError) as exc:
                self._stage(trace, "retrieval", time.perf_counter() - t)
                raise ApiError(503, "retrieval_unavailable", f"the retrieval backbone failed and no candidates were given: {exc}") from None
            item_ids, backbone_scores = retrieved.item_ids, retrieved.scores
        else:
            item_ids = list(req.candidates)
            backbone_scores = await self.retriever.score(req.user_id, item_ids)
        self._stage(trace, "retrieval", time.perf_counter() - t)
        if not item_ids:
            raise ApiError(422, "no_candidates", "the backbone returned no candidates for this user")
        return item_ids, backbone_scores

    def _fuse(self, req: RerankRequest, utilities, history, catalog, backbone_scores, trace: RequestTrace) -> tuple[np.ndarray, str]:
        """Fused scores (non-finite ones last) and the fusion that made them."""
        m = len(catalog)
        if req.fusion == "learned" and self.learned:
            model = self.learned[min(self.learned, key=lambda mm: (abs(mm - m), mm))]
            liked = [e.genres for e in history if e.rating >= self.store.liked_at_least]
            ctx = CandidateContext(liked, [c.genres for c in catalog], [self.store.popularity.get(c.item_id, 0) for c in catalog])
            fused, used = model.predict(fusion_features(m, utilities, self.settings.backbone, backbone_scores, ctx)), "learned"
        else:
            if req.fusion == "learned":
                trace.degrade("learned_fusion_unavailable")
            used = "hybrid" if req.fusion == "learned" else req.fusion
            if utilities:
                fused = hybrid_scores(utilities, {t_: w for t_, w in self.settings.hybrid_weights.items() if t_ in utilities})
            else:
                fused = np.arange(m, 0, -1, dtype=float)  # the backbone order
        return np.where(np.isfinite(fused), fused, -math.inf), used

    def _respond(self, req, request_id, item_ids, fused, top, utilities, repaired, fusion_used, trace: RequestTrace) -> RerankResponse:
        finite = fused[np.isfinite(fused)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        results = []
        for idx in top:
            value = float(fused[idx])
            rel = 0.0 if not math.isfinite(value) else (1.0 if hi == lo else (value - lo) / (hi - lo))
            results.append(RerankResult(
                item_id=item_ids[idx], index=idx, relevance_score=round(rel, 6), backbone_rank=idx + 1,
                scores={t_: round(float(u[idx]), 6) for t_, u in utilities.items()},
            ))
        for reason in trace.reasons:
            self.metrics.degraded.labels(reason).inc()
        trace.timings["total"] = round(trace.elapsed() * 1000, 3)
        return RerankResponse(
            request_id=request_id, user_id=req.user_id, model=self.model_name, fusion=fusion_used, results=results,
            tasks_used=sorted(utilities), degraded=bool(trace.reasons), degraded_reasons=trace.reasons,
            repaired_answers=repaired, cache=trace.cache, timings_ms=trace.timings,
        )

    async def _rank_admitted(self, profile, candidates, tasks, budget_s: float, user_id: str):
        if self.admission is None:
            return await self.engine.rank(profile, candidates, tasks=tasks, deadline_s=budget_s, seed=seed_for(user_id))
        async with self.admission.slot(budget_s) as left_s:
            t = time.perf_counter()
            result = await self.engine.rank(profile, candidates, tasks=tasks, deadline_s=left_s, seed=seed_for(user_id))
            self.admission.record(time.perf_counter() - t)
            return result

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
            t = time.perf_counter()
            reads = await asyncio.gather(*(self.scores.get(keys[t_]) for t_ in tasks))
            self._stage(trace, "result_cache", time.perf_counter() - t)
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
        profile = build_profile(history, self.store.liked_at_least, self.store.disliked_at_most, self.store.demographics(req.user_id))
        candidates = [Candidate(c.title, backbone_rank=i + 1, item_id=c.item_id) for i, c in enumerate(catalog)]
        try:
            result = await self._rank_admitted(profile, candidates, missing, remaining, req.user_id)
        except Overloaded as exc:
            if self.settings.overload_response == "reject":
                raise ApiError(429, "overloaded", "the LLM is at capacity; retry", {"retry_after_s": round(exc.retry_after_s, 3)},
                               headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from None
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
