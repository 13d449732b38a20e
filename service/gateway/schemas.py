"""Request and response bodies of the gateway's HTTP API (the shape of common rerank APIs: results
carry the `index` into the candidate list and a `relevance_score`; `k` plays `top_n`'s part)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.ranking.tasks import TaskName


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    candidates: list[str] | None = Field(default=None, description="item ids in the caller's retrieval order; omitted: the backbone's top-m")
    m: int | None = Field(default=None, ge=1, description="how many candidates to retrieve when none are given")
    k: int | None = Field(default=None, ge=1, description="how many results to return")
    tasks: list[TaskName] | None = Field(default=None, description="LLM tasks to fuse; [] = backbone order only. Given without `fusion`: the hybrid of these tasks")
    fusion: Literal["backbone", "rank_mean_no_llm", "learned_no_llm", "hybrid", "learned"] | None = Field(
        default=None, description="the ranking method; omitted (with `tasks` omitted too): the serving policy's, chosen on validation users (GET /readyz names it)")
    deadline_ms: int | None = Field(default=None, ge=1)
    use_cache: bool = Field(default=True, description="read cached task scores (histories are always read through the cache)")


class RerankResult(BaseModel):
    item_id: str
    index: int = Field(description="position in the candidate list")
    relevance_score: float = Field(description="fused score scaled to [0, 1] within this response")
    backbone_rank: int = Field(description="1-based rank in the candidate list")
    scores: dict[str, float | None] = Field(default_factory=dict, description="raw utility per task")


class RerankResponse(BaseModel):
    request_id: str
    user_id: str
    model: str
    fusion: str = Field(description="what ranked the results: backbone, rank_mean_no_llm, learned_no_llm, hybrid or learned "
                                    "(an LLM method with no task answered: backbone, the candidates' order)")
    results: list[RerankResult]
    tasks_used: list[str]
    degraded: bool
    degraded_reasons: list[str] = Field(default_factory=list)
    repaired_answers: dict[str, int] = Field(
        default_factory=dict,
        description="per task answered by the LLM: prompts whose answer was off format or non-finite (repaired; above the allowed share the task is dropped)",
    )
    cache: dict[str, str] = Field(default_factory=dict)
    timings_ms: dict[str, float]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    rating: float
    # 0 .. 2100-01-01: a timestamp outside is a unit mix-up (milliseconds) or garbage, refused (422)
    timestamp: int | None = Field(default=None, ge=0, le=4_102_444_800, description="seconds since the epoch (0 to 4102444800, the year 2100); default now")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int
    invalidated_users: list[str]
    cache_invalidation_failed: list[str] = Field(default_factory=list)
    shared_with_replicas: bool | None = Field(
        default=False, description="appended to the Redis event stream the other gateways follow; null when a timeout left it unknown")


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    m: int = Field(ge=1, le=1000)
    exclude: list[str] = Field(default_factory=list)


class RetrievedItem(BaseModel):
    item_id: str
    score: float


class RetrieveResponse(BaseModel):
    items: list[RetrievedItem]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None
