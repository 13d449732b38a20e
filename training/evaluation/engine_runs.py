"""Engine runs per stage, the records `make eval`, the serving-task validation, the serving policy
and the replay read: which users, their candidates (each backbone's exported top-m), the tuned
model's task utilities through the service's engine and a real vLLM server, cached per model and
backbone so a second run only recomputes its report.

Below `training.evaluation.evaluate` (the report) and `training.tuning.pipeline` (which runs the serving-task
validation after tuning): both read records from here, neither from the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from service.llm.client import LLMSettings, VLLMClient, prompt_format_of
from service.llm.hardware import default_cpu_dtype
from service.llm.vllm_server import VLLMServer
from service.ranking.engine import EngineConfig, RankingEngine, seed_for
from service.ranking.fusion import fuse, rank_by
from service.ranking.item_tokens import prompt_config_of_model
from service.ranking.prompts import Candidate, PromptConfig
from service.ranking.tasks import TASKS
from training.backbones.artifacts import load_backbone
from training.data import Split
from training.metrics import hr_from_ranks, ndcg_from_ranks, ndcg_gains
from training.paired_stats import paired_comparison
from training.paths import Paths
from training.tuning.instructions import user_profile

console = Console(soft_wrap=True)
TASK_METHODS = TASKS
FEATURE_BACKBONES = ("mf", "lightgcn", "sasrec")  # the learned ranker's feature backbones (the serving policy's)


@dataclass(frozen=True)
class EvalRequest:
    dataset: str = "ml-100k"
    data_path: Path | None = None  # original files; default the embedded data set
    backbones: tuple[str, ...] = ("lightgcn", "sasrec")
    ms: tuple[int, ...] = (10,)
    test_users: int = 0  # 0: every evaluated user
    valid_users: int = 0
    feature_backbones: tuple[str, ...] = FEATURE_BACKBONES
    seed: int = 2024
    model_dir: Path | None = None  # default artifacts/<dataset>/model
    concurrent_users: int = 4
    # Users whose held-out item is not among the m candidates score 0 under every ranking of that
    # list, so their prompts change no reported number; skipping them makes a stage ~5x cheaper.
    # True sends every user to the LLM (to count invalid answers over all of them, say).
    score_every_user: bool = False
    dtype: str | None = None  # default: bfloat16 where the CPU has bf16 instructions, else float32
    bootstrap: int = 1000
    reports_dir: Path = Path("reports")


@dataclass
class Record:
    """One user's engine output for one stage and m, everything the report needs."""

    user: int
    stage: str
    m: int
    items: list[int]  # candidate item indices in backbone order
    target: int
    utilities: dict[str, list[float]]
    invalid: dict[str, int]
    dropped: dict[str, str]
    seconds: float
    backbone_scores: list[float] = field(default_factory=list)
    scored: bool = True  # False: the target is not a candidate, so the LLM was not asked (see EvalRequest)


def sample_users(split: Split, n: int, seed: int) -> np.ndarray:
    users = split.evaluated_users()
    if n <= 0 or n >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=n, replace=False))


def candidate_lists(folder: Path, dataset) -> dict[str, dict[int, list[int]]]:
    out: dict[str, dict[int, list[int]]] = {"valid": {}, "test": {}}
    with (folder / "candidates.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            u = dataset.user_index[row["user_id"]]
            for stage in out:
                out[stage][u] = [dataset.item_index[i] for i in row[stage]]
    return out


def candidate_records(split: Split, users: np.ndarray, tops: dict[str, dict[int, list[int]]], stage: str, m: int) -> list[Record]:
    """Records of `users`' top-m candidates at `stage` with no LLM answers (`scored` False): what every
    method that does not call the LLM reads."""
    targets = split.target(stage)
    return [Record(user=int(u), stage=stage, m=m, items=[int(i) for i in tops[stage][int(u)][:m]], target=int(targets[u]), utilities={}, invalid={},
                   dropped={}, seconds=0.0, scored=False) for u in users]


async def run_engine(new_client: Callable[[], VLLMClient], split: Split, users: np.ndarray, stage: str, m: int, tops, prompt_cfg: PromptConfig, scores: np.ndarray, concurrency: int,
                     score_every_user: bool = False) -> list[Record]:
    """One event loop, one pooled client (batched per task on the model's template and block
    layout, as the gateway's): the users' prompts through the service's engine."""
    client = new_client()
    try:
        return await _run_engine(RankingEngine(client, EngineConfig(prompt=prompt_cfg)), split, users, stage, m, tops, prompt_cfg, scores, concurrency, score_every_user)
    finally:
        await client.aclose()


async def _run_engine(engine: RankingEngine, split: Split, users: np.ndarray, stage: str, m: int, tops, prompt_cfg: PromptConfig, scores: np.ndarray, concurrency: int,
                      score_every_user: bool = False) -> list[Record]:
    ds = split.dataset
    slots = asyncio.Semaphore(concurrency)
    targets = split.target(stage)
    asked = [u for u in users if score_every_user or targets[u] in tops[stage][u][:m]]
    bar = tqdm(total=len(asked), desc=f"{stage} m={m} ({len(asked)} of {len(users)} users have the item in the list)", leave=False)

    def unscored(u: int) -> Record:
        items = tops[stage][u][:m]
        return Record(user=int(u), stage=stage, m=m, items=[int(i) for i in items], target=int(targets[u]), utilities={}, invalid={}, dropped={},
                      seconds=0.0, backbone_scores=[float(scores[u, i]) for i in items], scored=False)

    async def one(u: int) -> Record:
        if not (score_every_user or targets[u] in tops[stage][u][:m]):
            return unscored(u)
        async with slots:
            items = tops[stage][u][:m]
            cands = [Candidate(ds.items[i].title, backbone_rank=r + 1, item_id=ds.items[i].item_id) for r, i in enumerate(items)]
            start = time.perf_counter()
            result = await engine.score(user_profile(split, u, set(), prompt_cfg), cands, seed=seed_for(ds.users[u].user_id))
            bar.update(1)
            return Record(
                user=int(u), stage=stage, m=m, items=[int(i) for i in items], target=int(split.target(stage)[u]),
                utilities={t: [float(x) for x in v] for t, v in result.utilities.items()},
                invalid={t: o.invalid_answers for t, o in result.outcomes.items()},
                dropped=result.dropped, seconds=time.perf_counter() - start,
                backbone_scores=[float(scores[u, i]) for i in items],
            )

    records = await asyncio.gather(*(one(int(u)) for u in users))
    bar.close()
    return list(records)


def engine_cache_dir(paths: Paths, dataset: str, run_key: str) -> Path:
    folder = paths.artifacts / dataset / "eval" / run_key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stage_cache_name(backbone: str, stage: str, m: int, users: int, seed: int, score_every_user: bool) -> str:
    """A stage's engine-output file; one that skipped the users without a hit says so in its name."""
    return f"{backbone}-{stage}-m{m}-u{users}-s{seed}{'' if score_every_user else '-hits'}.jsonl"


def stage_records(cache: Path, run: Callable[[], Awaitable[list[Record]]] | None) -> list[Record]:
    """One stage's engine outputs, from `cache` when an earlier run (eval or tune) left them."""
    if cache.is_file():
        return [Record(**json.loads(line)) for line in cache.read_text().splitlines()]
    start = time.perf_counter()
    records = asyncio.run(run())
    console.print(f"{cache.stem}: {len(records)} users in {time.perf_counter() - start:.0f}s")
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tmp.replace(cache)  # a killed run leaves no half-written cache behind
    return records


def utilities_of(rec: Record) -> dict[str, np.ndarray]:
    return {t: np.asarray(v) for t, v in rec.utilities.items()}



def relevant_index(rec: Record) -> int | None:
    return rec.items.index(rec.target) if rec.target in rec.items else None



def method_orders(rec: Record) -> dict[str, list[int]]:
    """Orders of the methods that need nothing fitted nor any backbone but the list's (candidate
    indices, best first): the backbone, each task alone (the backbone order when it did not answer)
    and the equal-weight hybrid."""
    util = utilities_of(rec)
    backbone = list(range(rec.m))
    out = {"backbone": backbone}
    for task in TASK_METHODS:
        out[task] = rank_by(util[task]) if task in util else backbone
    out["hybrid"] = fuse(rec.m, util).order
    return out


def target_rank(order: list[int], rec: Record) -> int:
    """0-based position of the target in the reranked list, -1 when it is not a candidate."""
    rel = relevant_index(rec)
    return order.index(rel) if rel is not None else -1


@contextlib.contextmanager
def llm_clients(req: EvalRequest, paths: Paths, model_dir: Path, prompt_cfg: PromptConfig) -> Iterator[Callable[[], VLLMClient]]:
    """A vLLM CPU server on the tuned model for the duration; yields a factory of clients on the
    model's chat template and block layout (one per stage, as each stage runs its own event loop)."""
    with VLLMServer(model_dir, dtype=req.dtype or default_cpu_dtype(), cache_dir=paths.cache / "vllm", log_file=paths.cache / "vllm" / "eval.log") as server:
        console.print(f"vLLM ready at {server.base_url} ({server.dtype}, prefix caching on)")
        llm = LLMSettings(base_url=server.base_url, model=server.served_name, timeout_s=300)
        template, encoder = prompt_format_of(model_dir, prompt_cfg.token_block)
        yield functools.partial(VLLMClient, llm, template=template, encoder=encoder)


SERVING_VALIDATION_METHODS = ("backbone", *TASK_METHODS, "hybrid")


def serving_ranks(records: list[Record]) -> dict[str, np.ndarray]:
    """{method: each user's target rank} for the serving-validation methods (nothing fitted)."""
    orders = [method_orders(r) for r in records]
    return {method: np.asarray([target_rank(o[method], r) for o, r in zip(orders, records, strict=True)]) for method in SERVING_VALIDATION_METHODS}


def serving_validation(paths: Paths, split: Split, model_dir: Path, backbone: str, req: EvalRequest = EvalRequest()) -> dict:
    """The serving task on the validation stage: NDCG@3 / HR@3 of reranking every validation user's
    `backbone` top-m (the validation item the relevant one) by the backbone, each task and the
    hybrid, and the hybrid's paired difference to the backbone. It chooses between tuning variants;
    its engine outputs are the very cache `make eval` reads for that stage."""
    ds = split.dataset
    manifest = json.loads((model_dir / "manifest.json").read_text())
    prompt_cfg = prompt_config_of_model(model_dir, manifest["prompt_config"])
    folder = paths.backbone_dir(ds.name, backbone)
    tops = candidate_lists(folder, ds)
    all_users = np.arange(split.n_users)
    scores = load_backbone(folder).score(all_users, [split.history(u, "valid") for u in all_users])
    users = sample_users(split, req.valid_users, req.seed + 1)
    m = req.ms[0]
    cache = engine_cache_dir(paths, ds.name, manifest["run_key"]) / stage_cache_name(backbone, "valid", m, len(users), req.seed, req.score_every_user)
    if cache.is_file():
        records = stage_records(cache, None)
    else:
        with llm_clients(req, paths, model_dir, prompt_cfg) as new_client:
            records = stage_records(cache, functools.partial(run_engine, new_client, split, users, "valid", m, tops, prompt_cfg, scores, req.concurrent_users,
                                                             req.score_every_user))
    ranks = serving_ranks(records)
    gain = paired_comparison(ndcg_gains(ranks["hybrid"], 3), ndcg_gains(ranks["backbone"], 3), n_boot=req.bootstrap, seed=req.seed)
    return {
        "backbone": backbone, "m": m, "users": len(records), "users_asked": sum(r.scored for r in records),
        "NDCG@3": {k: ndcg_from_ranks(r, 3) for k, r in ranks.items()},
        "HR@3": {k: hr_from_ranks(r, 3) for k, r in ranks.items()},
        "hybrid_vs_backbone": gain,
    }


