"""`make bench`'s pressure scenarios against the running stack, after `hybrid` measured capacity:

  overload  uncached users at twice the capacity (open loop, the serving default deadline): goodput,
            the answers that were not degraded per second, against the capacity (the hybrid's users/s
            with 4 in flight and no deadline)
  soak      half the capacity for --soak-duration seconds, with one POST /events per five reranks:
            errors, accepted events missing from the gateway's events log, the stack's memory
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from service.loadtest.load import Outcome, open_loop, summarise


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def overload_scenario(http: httpx.AsyncClient, all_users: list[str], capacity_rps: float, duration_s: float, m: int, deadline_ms: int) -> dict:
    rng = random.Random(2)
    reasons: dict[str, int] = {}

    async def one(i: int) -> Outcome:
        try:
            r = await http.post("/rerank", json={"user_id": rng.choice(all_users), "m": m, "k": m, "use_cache": False, "fusion": "hybrid"})
        except httpx.HTTPError:
            return Outcome(0.0, False)
        if r.status_code != 200:
            return Outcome(0.0, False)
        data = r.json()
        for reason in data["degraded_reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
        return Outcome(0.0, True, data["degraded"])

    rate = 2 * capacity_rps
    outcomes, wall = await open_loop(one, rate, duration_s)
    full = sum(o.ok and not o.degraded for o in outcomes)
    goodput = full / wall if wall else 0.0
    return summarise(outcomes, wall, target_rps=round(rate, 3), capacity_rps=round(capacity_rps, 3), goodput_rps=round(goodput, 3),
                     goodput_share_of_capacity=round(goodput / capacity_rps, 3) if capacity_rps else 0.0,
                     deadline_ms=deadline_ms, degraded_reasons=reasons).as_dict()


async def soak_scenario(http: httpx.AsyncClient, all_users: list[str], items: list[str], capacity_rps: float, duration_s: float, m: int,
                        stack_pid: int, events_log: Path) -> dict:
    rng = random.Random(3)
    accepted: list[tuple[str, str, int]] = []
    start_rss = rss_mb(stack_pid)
    stamp = 4_000_000_000  # far after the data set, so each posted event is told apart in the log

    async def one(i: int) -> Outcome:
        try:
            if i % 5 == 4:
                user, item, ts = rng.choice(all_users), rng.choice(items), stamp + i
                r = await http.post("/events", json={"events": [{"user_id": user, "item_id": item, "rating": 4, "timestamp": ts}]})
                if r.status_code == 200:
                    accepted.append((user, item, ts))
                return Outcome(0.0, r.status_code == 200)
            r = await http.post("/rerank", json={"user_id": rng.choice(all_users), "m": m, "k": m, "use_cache": False, "fusion": "hybrid"})
        except httpx.HTTPError:
            return Outcome(0.0, False)
        return Outcome(0.0, r.status_code == 200, r.status_code == 200 and r.json()["degraded"])

    outcomes, wall = await open_loop(one, capacity_rps / 2, duration_s)
    logged = set()
    if events_log.is_file():
        import json

        for line in events_log.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                logged.add((e["user_id"], e["item_id"], int(e["timestamp"])))
    return summarise(outcomes, wall, duration_s=duration_s, target_rps=round(capacity_rps / 2, 3), events_accepted=len(accepted),
                     events_lost=sum(e not in logged for e in accepted), rss_mb_start=start_rss, rss_mb_end=rss_mb(stack_pid)).as_dict()
