"""Warm the LLM server before the gateway says it is ready.

A vLLM CPU server answers its first requests far slower than later ones: on a fresh `make serve`
(2-core AMD EPYC, AVX512-BF16) no task of the first two requests answered within the default 5 s
deadline; after a restart the first users took 3.3 s, 1.6 s, then 0.8-1.0 s. So before `/readyz` reports the LLM as `ok`,
the gateway scores a few known users' backbone top-m through the very engine requests use. Nothing
is cached and nothing is counted in the request metrics: these are not requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.gateway.reranker import RerankService
from service.ranking.engine import seed_for

log = logging.getLogger("recranker.gateway")


@dataclass
class WarmUpResult:
    attempts: int  # scorings tried, retries included
    users_answered: int
    seconds: float


async def score_one_user(service: RerankService, user_id: str, deadline_s: float) -> bool:
    """Whether every default task answered for this user's backbone top-m."""
    store = service.store
    history = store.history(user_id)  # not through the history cache: a warm-up leaves no trace there
    retrieved = await service.retriever.top_m(user_id, service.settings.default_m, {e.item_id for e in history})
    profile, candidates = service.llm_inputs(user_id, history, store.check_items(retrieved.item_ids))
    result = await service.engine.score(profile, candidates, tasks=list(service.settings.default_tasks), deadline_s=deadline_s, seed=seed_for(user_id))
    return not result.dropped


async def warm_up(service: RerankService, users: int, deadline_s: float, give_up_s: float, retry_s: float = 2.0,
                  clock: Callable[[], float] = time.monotonic) -> WarmUpResult:
    """Score `users` users one after another; while the LLM does not answer (not started yet, or
    down), wait `retry_s` and try again, for at most `give_up_s` in all (on `clock`: the event
    loop's virtual time in tests)."""
    started = clock()
    user_ids = [u for u in service.store.users if service.store.version(u) > 0][:users]  # known users with a history
    attempts = answered = 0
    for user_id in user_ids:
        while True:
            left = give_up_s - (clock() - started)
            if left <= 0:
                return WarmUpResult(attempts, answered, clock() - started)
            attempts += 1
            try:
                ok = await asyncio.wait_for(score_one_user(service, user_id, min(deadline_s, left)), timeout=left)
            except Exception as exc:  # noqa: BLE001 - any failure means "not warm yet"; the LLM check reports why
                log.info("llm warm-up: no answer yet", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
                ok = False
            if ok:
                answered += 1
                break
            await asyncio.sleep(min(retry_s, max(0.0, give_up_s - (clock() - started))))
    return WarmUpResult(attempts, answered, clock() - started)
