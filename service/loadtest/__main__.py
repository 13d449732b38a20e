"""`make bench`: start `make serve`'s stack, load it from this (second) process, then run the
paper-style baseline on the same model and hardware, and write reports/bench.json.

Scenarios:
  gateway_only  LLM tasks off (`tasks: []`), open loop at --rate requests/s: the gateway's own cost
  hybrid        all three tasks through the gateway, no score cache, --users users, --concurrency in flight
  overload      uncached users at twice the hybrid's capacity, serving deadline: goodput (pressure.py)
  soak          half the capacity for --soak-duration s with events: errors, events lost, memory
  baseline      the same users and candidates, the same 2m+1 prompts answered as free text at
                temperature 0.1 and parsed, straight to a vLLM server without prefix caching
speedup_vs_baseline = hybrid users/s / baseline users/s at the same concurrency.
The hybrid also reports the prompt tokens per user that vLLM received and computed (its own counters,
`llm_counters.py`). `--compare-model DIR` measures a second model (say the title-only one beside a
model with collaborative item tokens) the same way in the same run, hybrid and baseline only, into
`compare`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from service.gateway.app import prompt_config_of
from service.gateway.serving_tables import ServingTablesError
from service.gateway.settings import GatewaySettings
from service.gateway.store import InteractionStore
from service.llm.client import LLMSettings, VLLMClient
from service.llm.hardware import cpu_has_fast_bf16, machine_description
from service.llm.vllm_server import VLLMServer, free_port
from service.loadtest.baseline import baseline_rank
from service.loadtest.llm_counters import read_counters
from service.loadtest.load import Outcome, closed_loop, open_loop, summarise
from service.loadtest.pressure import overload_scenario, soak_scenario
from service.procutil import stop_process_group
from service.ranking.engine import seed_for
from service.ranking.profile import build_profile
from service.ranking.prompts import Candidate, PromptConfig

console = Console()


def start_stack(model_dir: Path, port: int, llm_port: int, log: Path, events_log: Path) -> subprocess.Popen:
    # A CPU vLLM answering several users at once takes tens of seconds: the bench measures
    # throughput, so no task may be dropped by the serving defaults' deadline or timeout.
    env = dict(os.environ, RECRANKER_PORT=str(port), RECRANKER_HOST="127.0.0.1", RECRANKER_LOG_LEVEL="WARNING",
               RECRANKER_LLM_TIMEOUT_S="900", RECRANKER_MAX_DEADLINE_MS="900000", RECRANKER_MODEL_DIR=str(model_dir),
               # the soak's events go to a log of their own, never into the one `make serve` replays
               RECRANKER_EVENTS_LOG=str(events_log))
    out = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "service.gateway.stack", "--llm-port", str(llm_port)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(base: str, process: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the stack exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the stack was not ready after {timeout_s:.0f}s; see {log}")


async def gateway_scenarios(base: str, llm_base: str, users: list[str], all_users: list[str], args) -> tuple[dict, dict[str, list[str]]]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        rng = random.Random(0)

        server_ms: list[float] = []  # the gateway's own handler time, without HTTP or this client

        # aiohttp for the cheap requests: httpx's own per-request CPU showed up in the latencies
        # it measured (the generator shares the machine's 2 cores with the gateway)
        fast = aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=200))

        async def cheap(body: dict) -> Outcome:
            try:
                async with fast.post("/rerank", json=body) as r:
                    if r.status != 200:
                        return Outcome(0.0, False)
                    data = await r.json()
            except aiohttp.ClientError:
                return Outcome(0.0, False)
            server_ms.append(data["timings_ms"]["total"])
            methods[data["fusion"]] = methods.get(data["fusion"], 0) + 1
            return Outcome(0.0, True, data["degraded"])

        async def gateway_only(i: int) -> Outcome:  # no LLM task, no feature: retrieval and the candidates' order
            return await cheap({"user_id": rng.choice(all_users), "tasks": [], "m": args.m, "k": 10})

        async def default_path(i: int) -> Outcome:  # the default request: the serving policy's method
            return await cheap({"user_id": rng.choice(all_users), "m": args.m, "k": 10})

        methods: dict[str, int] = {}

        candidates: dict[str, list[str]] = {}
        reasons: dict[str, int] = {}

        async def hybrid(i: int) -> Outcome:
            user = users[i % len(users)]
            body = {"user_id": user, "m": args.m, "k": args.m, "use_cache": False, "deadline_ms": 900_000, "fusion": "hybrid"}
            try:
                r = await http.post("/rerank", json=body)
            except httpx.HTTPError:
                return Outcome(0.0, False)
            if r.status_code != 200:
                return Outcome(0.0, False)
            data = r.json()
            candidates[user] = [x["item_id"] for x in sorted(data["results"], key=lambda x: x["index"])]
            for reason in data["degraded_reasons"]:
                reasons[reason] = reasons.get(reason, 0) + 1
            return Outcome(0.0, True, data["degraded"], sum(data["repaired_answers"].values()))

        console.print("warm-up ...")
        await closed_loop(gateway_only, 200, 20)
        await closed_loop(hybrid, args.concurrency, args.concurrency)
        reasons.clear()
        console.print(f"gateway_only: {args.rate} requests/s for {args.duration}s, LLM tasks off")
        server_ms.clear()
        outcomes, wall = await open_loop(gateway_only, args.rate, args.duration)
        inside = np.percentile(server_ms, [50, 99]) if server_ms else [0.0, 0.0]
        scenarios = {"gateway_only": summarise(outcomes, wall, target_rps=args.rate, handler_p50_ms=round(float(inside[0]), 3), handler_p99_ms=round(float(inside[1]), 3)).as_dict()}
        console.print(f"default_path: {args.rate} requests/s for {args.duration}s, the serving policy's method")
        server_ms.clear()
        methods.clear()
        await closed_loop(default_path, 200, 20)
        server_ms.clear()
        methods.clear()
        outcomes, wall = await open_loop(default_path, args.rate, args.duration)
        inside = np.percentile(server_ms, [50, 99]) if server_ms else [0.0, 0.0]
        scenarios["default_path"] = summarise(outcomes, wall, target_rps=args.rate, handler_p50_ms=round(float(inside[0]), 3), handler_p99_ms=round(float(inside[1]), 3),
                                              methods=dict(methods)).as_dict()
        await fast.close()
        console.print(f"hybrid: {len(users)} users, {args.concurrency} in flight, m={args.m}")
        before = await read_counters(http, llm_base)
        outcomes, wall = await closed_loop(hybrid, len(users), args.concurrency)
        after = await read_counters(http, llm_base)
        tokens = (after - before).per(len(users)) if before and after else {}
        scenarios["hybrid"] = summarise(outcomes, wall, users=len(users), concurrency=args.concurrency, repaired_answers=sum(o.invalid for o in outcomes), degraded_reasons=dict(reasons), **tokens).as_dict()
    return scenarios, candidates


async def pressure_scenarios(base: str, all_users: list[str], items: list[str], capacity_rps: float, args, stack_pid: int, events_log: Path) -> dict:
    out = {}
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200)) as http:
        console.print(f"overload: {2 * capacity_rps:.2f} users/s (twice the capacity) for {args.overload_duration:.0f}s")
        out["overload"] = await overload_scenario(http, all_users, capacity_rps, args.overload_duration, args.m, GatewaySettings().default_deadline_ms)
        if args.soak_duration > 0:
            console.print(f"soak: {capacity_rps / 2:.2f} requests/s for {args.soak_duration:.0f}s, one in five an event")
            out["soak"] = await soak_scenario(http, all_users, items, capacity_rps, args.soak_duration, args.m, stack_pid, events_log)
    return out


async def baseline_scenario(server: VLLMServer, store: InteractionStore, cfg: PromptConfig, candidates: dict[str, list[str]], args) -> dict:
    llm = VLLMClient(LLMSettings(base_url=server.base_url, model=server.served_name, timeout_s=600, max_concurrency=256, max_connections=256))
    users = list(candidates)
    failed = 0

    async def one(i: int) -> Outcome:
        nonlocal failed
        user = users[i % len(users)]
        profile = build_profile(store.history(user), store.liked_at_least, store.disliked_at_most, store.demographics(user))
        cands = [Candidate(store.items[item].title, backbone_rank=r + 1, item_id=item) for r, item in enumerate(candidates[user])]
        _, bad = await baseline_rank(llm, profile, cands, cfg, seed_for(user))
        failed += bad
        return Outcome(0.0, True)

    try:
        await closed_loop(one, args.concurrency, args.concurrency)  # warm-up
        failed = 0
        outcomes, wall = await closed_loop(one, len(users), args.concurrency)
    finally:
        await llm.aclose()
    prompts = 2 * args.m + 1 - (args.m % 2)
    return summarise(outcomes, wall, users=len(users), concurrency=args.concurrency, prompts_per_user=prompts, failed_parses=failed).as_dict()


def measure_model(settings: GatewaySettings, model_dir: Path, cfg: PromptConfig, store: InteractionStore, users: list[str], all_users: list[str],
                  args, logs: Path, pressure: bool) -> tuple[dict, float]:
    """One model (prompted as `cfg`) through `make serve`'s stack (overload and soak when `pressure`),
    then the paper-style baseline on the same model; returns them and the hybrid's speedup over it."""
    port, llm_port = free_port(), free_port()
    log = logs / f"bench-stack-{port}.log"
    base = f"http://127.0.0.1:{port}"
    console.print(f"starting the stack (make serve) on {base} with {model_dir}, log {log} ...")
    events_log = logs / f"bench-events-{port}.jsonl"
    stack = start_stack(model_dir, port, llm_port, log, events_log)
    try:
        wait_ready(base, stack, log)
        scenarios, candidates = asyncio.run(gateway_scenarios(base, f"http://127.0.0.1:{llm_port}", users, all_users, args))
        if pressure:
            scenarios.update(asyncio.run(pressure_scenarios(base, all_users, sorted(store.items), scenarios["hybrid"]["rps"], args, stack.pid, events_log)))
    finally:
        stop_process_group(stack, signal.SIGINT, grace_s=60)  # Ctrl-C: the stack stops vLLM itself
    console.print("baseline: vLLM without prefix caching, free-text answers ...")
    with VLLMServer(model_dir, cache_dir=settings.cache_dir / "vllm", prefix_caching=False, log_file=logs / "bench-baseline-vllm.log") as server:
        scenarios["baseline"] = asyncio.run(baseline_scenario(server, store, cfg, candidates, args))
    return scenarios, scenarios["hybrid"]["rps"] / scenarios["baseline"]["rps"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=32)  # 16 gave ratios ±0.3x apart between runs
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--overload-duration", type=float, default=120.0)
    p.add_argument("--soak-duration", type=float, default=600.0, help="0 skips the soak")
    p.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    p.add_argument("--compare-model", type=Path, default=None, help="a second model folder measured in the same run (hybrid and baseline)")
    args = p.parse_args(argv)
    settings = GatewaySettings()
    if not (settings.resolved_model_dir / "config.json").is_file():
        console.print(f"[red]error:[/red] {settings.resolved_model_dir}: no tuned model; run `make tune` first")
        return 2
    if args.compare_model is not None and not (args.compare_model / "config.json").is_file():
        console.print(f"[red]error:[/red] --compare-model {args.compare_model}: no model there (no config.json)")
        return 2
    prompt_cfg = prompt_config_of(settings.resolved_model_dir, settings.dataset, settings.prompt_max_liked, settings.prompt_max_disliked)
    try:
        store = InteractionStore.from_folder(settings.serving_dir)
    except ServingTablesError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    all_users = sorted(store.users)
    users = random.Random(1).sample(all_users, args.users)
    logs = settings.cache_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    scenarios, speedup = measure_model(settings, settings.resolved_model_dir, prompt_cfg, store, users, all_users, args, logs, pressure=True)
    report = {
        "scenarios": scenarios,
        "speedup_vs_baseline": round(speedup, 2),
        "latency_ratio_p50": round(scenarios["baseline"]["p50_ms"] / scenarios["hybrid"]["p50_ms"], 2),
        "gateway_overhead_p99_ms": scenarios["gateway_only"]["p99_ms"],
        # what the served default costs over retrieval alone, measured in the same run
        "default_path_vs_gateway_only": {q: round(scenarios["default_path"][f"{q}_ms"] / scenarios["gateway_only"][f"{q}_ms"], 2) for q in ("p50", "p99")},
        "setup": {
            "prompt_history": {"max_liked": prompt_cfg.max_liked, "max_disliked": prompt_cfg.max_disliked},
            "item_tokens": prompt_cfg.item_tokens,
            "m": args.m, "users": args.users, "concurrency": args.concurrency, "rate": args.rate, "duration_s": args.duration,
            "model": str(settings.resolved_model_dir), "backbone": settings.backbone, "dataset": settings.dataset,
            # bf16 instructions change the ratio: they make prefill cheap, so per-request costs weigh more
            "machine": f"{machine_description()}; {'bf16' if cpu_has_fast_bf16() else 'no bf16 (float32)'}", "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    }
    if args.compare_model is not None:
        other_cfg = prompt_config_of(args.compare_model, settings.dataset, settings.prompt_max_liked, settings.prompt_max_disliked)
        console.print(f"compare: {args.compare_model} (item tokens: {other_cfg.item_tokens}), hybrid and baseline")
        other, other_speedup = measure_model(settings, args.compare_model, other_cfg, store, users, all_users, args, logs, pressure=False)
        report["compare"] = {"model": str(args.compare_model), "item_tokens": other_cfg.item_tokens, "scenarios": other,
                             "speedup_vs_baseline": round(other_speedup, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"bench ({args.out})")
    for col in ("scenario", "requests", "errors", "degraded", "rps", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col)
    compared = report.get("compare", {}).get("scenarios", {})
    for name, s in [*scenarios.items(), *((f"compare {n}", c) for n, c in compared.items())]:
        table.add_row(name, str(s["requests"]), str(s["errors"]), str(s["degraded"]), f"{s['rps']:.2f}", f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}")
    console.print(table)
    console.print(f"hybrid vs baseline: {speedup:.2f}x users/s")
    if "compare" in report:
        console.print(f"compare model {report['compare']['model']}: {report['compare']['speedup_vs_baseline']:.2f}x users/s")
    for label, hybrid in (("served", scenarios["hybrid"]), ("compare", compared.get("hybrid"))):
        if hybrid and "prompt_tokens_per_user" in hybrid:
            console.print(f"{label}: {hybrid['prompt_tokens_per_user']:.0f} prompt tokens per user, {hybrid['computed_prompt_tokens_per_user']:.0f} computed (vLLM's counters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
