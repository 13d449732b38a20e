"""`make replay`: the served answers, measured. The gateway is started on the state each test user
had at test time (the serving tables of `rows_as_of(..., "test")`: the training part and the
validation item), every evaluated user is sent through HTTP `POST /rerank` with the candidates
`make eval` reranked (the backbone's test-time top-m), and NDCG@3 / HR@3 are computed from the
responses. Beside them: the same method computed offline as `make eval` computes it (the policy's
models from the very files the gateway loaded, the inputs from the same builder), the share of
users whose served order is the offline one, and the largest per-user NDCG@3 difference.

Runs: the default request (the serving policy's method), then `fusion: hybrid` (the LLM path,
against a vLLM CPU server; only the users whose test item is among the candidates, the ones
`make eval` asked the LLM about). Writes reports/replay-<dataset>.json, a list of runs, the default
policy's first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from service.gateway.stack import redis_reachable
from service.llm.hardware import default_cpu_dtype, machine_description
from service.llm.vllm_server import VLLMServer, free_port
from service.ranking.fusion import LearnedFusion
from service.ranking.policy import ServingPolicy, policy_dir
from training.data import leave_one_out, load_dataset, require_held_out_users
from training.data.serving_export import write_serving_tables
from training.data.split import Split, rows_as_of
from training.evaluation.engine_runs import (
    EvalRequest,
    Record,
    candidate_lists,
    candidate_records,
    engine_cache_dir,
    method_orders,
    sample_users,
    stage_cache_name,
    target_rank,
)
from training.evaluation.serving_policy import feature_source, method_order, record_inputs
from training.metrics import hr_from_ranks, ndcg_gains
from training.paths import Paths

console = Console(soft_wrap=True)


@dataclass(frozen=True)
class ReplayRequest:
    dataset: str = "ml-100k"
    data_path: Path | None = None
    backbone: str = "lightgcn"
    m: int = 10
    runs: tuple[str, ...] = ("policy", "hybrid")  # "policy": the default request; else an explicit fusion
    users: int = 0  # 0: every evaluated user
    concurrency: int = 4
    reports_dir: Path = Path("reports")
    seed: int = 2024
    policy_dir: Path | None = None  # default <model>/policy/<backbone>, as the gateway's
    stage: str = "test"  # "valid": the validation-time state and lists (where the LLM's prompts match make eval's exactly)


def offline_records(split: Split, users: np.ndarray, tops: dict, m: int, cached: Path | None, stage: str = "test") -> list[Record]:
    """The test stage's records as `make eval` has them: its engine cache when there is one (LLM
    answers included), else the candidates alone (enough for every method without the LLM)."""
    if cached is not None and cached.is_file():
        return [Record(**json.loads(line)) for line in cached.read_text().splitlines()]
    return candidate_records(split, users, tops, stage, m)


def offline_order(method: str, rec: Record, split: Split, source, backbone: str, models: dict[str, LearnedFusion]) -> list[int]:
    if method in ("backbone", "hybrid"):
        return method_orders(rec)[method]
    return method_order(method, rec, record_inputs(source, split, rec, backbone), models)


@contextlib.contextmanager
def gateway(paths: Paths, dataset: str, tables: Path, backbone: str, policy: Path, llm_url: str, port: int, log: Path) -> Iterator[str]:
    """`python -m service.gateway` on `tables`, its own events log and cache prefix; yields its URL
    once /readyz says ready."""
    env = {**os.environ, "RECRANKER_DATASET": dataset, "RECRANKER_SERVING_TABLES_DIR": str(tables), "RECRANKER_BACKBONE": backbone, "RECRANKER_POLICY_DIR": str(policy),
           "RECRANKER_ARTIFACTS_DIR": str(paths.artifacts), "RECRANKER_PORT": str(port), "RECRANKER_LLM_URL": llm_url,
           "RECRANKER_EVENTS_LOG": str(log.with_suffix(".events.jsonl")), "RECRANKER_CACHE_PREFIX": f"replay-{uuid.uuid4().hex[:8]}",
           "RECRANKER_MAX_DEADLINE_MS": "600000", "RECRANKER_LLM_WARMUP_USERS": "0"}
    if not redis_reachable(env.get("RECRANKER_REDIS_URL", "redis://127.0.0.1:6379/0")):
        env["RECRANKER_REDIS_URL"] = "memory://"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "service.gateway"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready in 300 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()


async def send_all(url: str, bodies: list[dict], concurrency: int) -> list[dict]:
    slots = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(bodies), desc="replay", leave=False)
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(body: dict) -> dict:
            async with slots:
                resp = await client.post(f"{url}/rerank", json=body)
                bar.update(1)
                if resp.status_code != 200:
                    raise RuntimeError(f"POST /rerank {body['user_id']}: HTTP {resp.status_code} {resp.text[:300]}")
                return resp.json()

        out = await asyncio.gather(*(one(b) for b in bodies))
    bar.close()
    return list(out)


def measure(run: str, records: list[Record], answers: list[dict], offline: list[list[int]], split: Split, report_row: dict | None) -> dict:
    ds = split.dataset
    served_orders = []
    for rec, ans in zip(records, answers, strict=True):
        index = {ds.items[i].item_id: j for j, i in enumerate(rec.items)}
        served_orders.append([index[r["item_id"]] for r in ans["results"]])
    served_ranks = np.asarray([target_rank(o, r) for o, r in zip(served_orders, records, strict=True)])
    offline_ranks = np.asarray([target_rank(o, r) for o, r in zip(offline, records, strict=True)])
    served_gain, offline_gain = ndcg_gains(served_ranks, 3), ndcg_gains(offline_ranks, 3)
    methods = sorted({a["fusion"] for a in answers})
    return {
        "run": run,
        "method": methods[0] if len(methods) == 1 else methods,
        "users": len(records),
        "served": {"NDCG@3": float(served_gain.mean()), "HR@3": hr_from_ranks(served_ranks, 3)},
        "offline": {"NDCG@3": float(offline_gain.mean()), "HR@3": hr_from_ranks(offline_ranks, 3)},
        "quality_report_row": report_row,
        "same_order_share": float(np.mean([s == o for s, o in zip(served_orders, offline, strict=True)])),
        "changed_order_share": float(np.mean([s != sorted(s) for s in served_orders])),  # answers not in the candidates' order
        "max_abs_ndcg_diff": float(np.abs(served_gain - offline_gain).max()) if len(records) else 0.0,
        "degraded_answers": int(sum(a["degraded"] for a in answers)),
        "served_methods": {m: int(sum(a["fusion"] == m for a in answers)) for m in methods},
    }


def report_row(reports_dir: Path, dataset: str, backbone: str, method: str, m: int) -> dict | None:
    path = reports_dir / f"eval-{dataset}-{backbone}.json"
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text())["rows"] if r["method"] == method and r["m"] == m and r["subset"] == "all"]
    return {"NDCG@3": rows[0]["NDCG@3"], "HR@3": rows[0]["HR@3"], "users": rows[0]["users"], "file": str(path)} if rows else None


def run_replay(req: ReplayRequest, paths: Paths) -> Path:
    dataset = load_dataset(req.dataset, req.data_path, cache_dir=paths.cache)
    split = require_held_out_users(leave_one_out(dataset), req.data_path or req.dataset)
    model_dir = paths.artifacts / dataset.name / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    folder = req.policy_dir or policy_dir(model_dir, req.backbone)
    policy = ServingPolicy.load(folder)
    models = {name: LearnedFusion.load(folder / file) for name, file in policy.fitted_models.items()}
    source = feature_source(paths, split, policy.feature_backbones)
    stage = req.stage
    tables = write_serving_tables(dataset, paths.artifacts / dataset.name / "replay" / f"{stage}-serving", rows_as_of(dataset, stage), state=stage)
    tops = candidate_lists(paths.backbone_dir(dataset.name, req.backbone), dataset)
    ev = EvalRequest()
    users = sample_users(split, req.users, ev.seed if stage == "test" else ev.seed + 1)  # make eval's users of that stage
    cache = engine_cache_dir(paths, dataset.name, manifest["run_key"]) / stage_cache_name(req.backbone, stage, req.m, len(users), ev.seed, ev.score_every_user)
    console.print(f"replay: {len(users)} {stage} users of {dataset.name}, {req.backbone} top-{req.m}; policy {policy.method}; tables {tables}")
    results = []
    for run in req.runs:
        method = policy.method if run == "policy" else run
        needs_llm = method in ("hybrid", "learned")
        records = offline_records(split, users, tops, req.m, cache if needs_llm else None, stage)
        if needs_llm:
            if not cache.is_file():
                console.print(f"[yellow]replay {run}: no {stage}-stage LLM outputs in {cache}; run `make eval` first[/yellow]")
                continue
            records = [r for r in records if r.scored]  # the users make eval asked the LLM about
        offline = [offline_order(method, r, split, source, req.backbone, models) for r in records]
        bodies = [{"user_id": dataset.users[r.user].user_id, "candidates": [dataset.items[i].item_id for i in r.items], "k": req.m, "use_cache": False,
                   **({} if run == "policy" else {"fusion": run}), **({"deadline_ms": 600000} if needs_llm else {})} for r in records]
        log = paths.cache / "logs" / f"replay-{run}.log"
        server = VLLMServer(model_dir, dtype=default_cpu_dtype(), cache_dir=paths.cache / "vllm", log_file=paths.cache / "logs" / "replay-vllm.log") if needs_llm else None
        started = time.perf_counter()
        with server or contextlib.nullcontext(), gateway(paths, dataset.name, tables, req.backbone, folder, server.base_url if server else "http://127.0.0.1:9",
                                                          free_port(), log) as url:
            answers = asyncio.run(send_all(url, bodies, req.concurrency))
        row = measure(run, records, answers, offline, split, report_row(req.reports_dir, dataset.name, req.backbone, method, req.m))
        row |= {"requested": run, "stage": stage, "policy_method": policy.method, "seconds": round(time.perf_counter() - started, 1), "machine": machine_description(),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "backbone": req.backbone, "m": req.m}
        console.print(json.dumps({k: row[k] for k in ("run", "method", "users", "served", "offline", "same_order_share", "max_abs_ndcg_diff")}))
        results.append(row)
    req.reports_dir.mkdir(parents=True, exist_ok=True)
    out = req.reports_dir / f"replay-{dataset.name}.json"
    kept = [r for r in json.loads(out.read_text()) if r.get("stage", "test") != stage] if out.is_file() else []  # the other stage's runs stay
    results = results + kept if stage == "test" else kept + results
    out.write_text(json.dumps(results, indent=1))
    console.print(f"-> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluation.replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-path", type=Path, default=None)
    p.add_argument("--backbone", default="lightgcn")
    p.add_argument("--runs", nargs="+", default=["policy", "hybrid"], help="policy (the default request) and/or explicit fusions")
    p.add_argument("--users", type=int, default=0, help="sample this many evaluated users (0: all)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--stage", choices=["test", "valid"], default="test", help="whose state and lists: the test users' (default) or the validation users'")
    args = p.parse_args(argv)
    paths = Paths.from_env()
    run_replay(ReplayRequest(dataset=args.dataset, data_path=args.data_path, backbone=args.backbone, runs=tuple(args.runs), users=args.users,
                             concurrency=args.concurrency, stage=args.stage), paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
