"""Every gateway setting, from environment variables prefixed RECRANKER_ (or a .env file).

One object, built once at start-up and handed to whatever needs it; nothing reads os.environ
elsewhere in the request path. deploy/.env.example lists them all with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.ranking.fusion import BACKBONE, DEFAULT_WEIGHTS
from service.ranking.tasks import TASKS, TaskName


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECRANKER_", env_file=".env", extra="ignore")

    # Where the offline pipeline left its outputs.
    artifacts_dir: Path = Path("artifacts")
    cache_dir: Path = Path(".cache")
    dataset: str = "ml-100k"
    backbone: str = "lightgcn"
    model_dir: Path | None = None  # default <artifacts>/<dataset>/model
    # The serving policy (default <model>/policy/<backbone>): which ranking the default request gets.
    # A folder without policy.json: the hybrid of the LLM tasks, as before policies.
    policy_dir: Path | None = None
    serving_tables_dir: Path | None = None  # default <artifacts>/<dataset>/serving (make replay points it at a past state)

    # Retrieval backbone: scored in process from its artefacts, or a remote HTTP service.
    retrieval: Literal["embedded", "remote"] = "embedded"
    retrieval_url: str | None = None
    retrieval_timeout_s: float = 0.5

    # The LLM: vLLM's OpenAI-compatible server.
    llm_url: str = "http://127.0.0.1:8000"
    llm_model: str = "recranker"
    llm_timeout_s: float = 30.0
    llm_max_concurrency: int = 256
    # Admission control (service/gateway/admission.py): at most this many users scored at once
    # (fewer when the measured scoring time says more would miss their deadlines; past a few at once
    # every request only gets slower), how many more may wait for room, and what a request that
    # cannot get it in time gets: "degrade" (200, backbone order, reason `overloaded`) or "reject"
    # (429 with Retry-After).
    llm_slots: int = Field(default=4, ge=1)
    llm_max_waiting: int = Field(default=4, ge=0)
    # The quantile of the scoring time admission plans with (0.5: its mean; higher admits fewer at
    # once, so that fewer admitted requests miss their deadline).
    llm_admission_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)
    overload_response: Literal["degrade", "reject"] = "degrade"
    # Before /readyz reports the LLM `ok`, this many known users are scored through it (a cold vLLM
    # CPU server missed the 5 s deadline on its first users; service/gateway/warmup.py), giving up
    # after llm_warmup_timeout_s (then ready anyway: the LLM check says whether it answers). 0: off.
    llm_warmup_users: int = Field(default=3, ge=0)
    llm_warmup_timeout_s: float = Field(default=300.0, gt=0)
    # A task whose invalid answers (off format, or a non-finite logprob; counted per prompt) exceed
    # this share of its prompts is dropped from the fusion (`llm_invalid_answers`); up to it, the
    # invalid answers are repaired (backbone order) and counted, and the task's scores not cached.
    max_invalid_answer_share: float = Field(default=0.2, ge=0.0, le=1.0)

    # Redis: the read-through cache of histories and of per-user task scores.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.1
    cache_prefix: str = "recranker"
    history_ttl_s: int = 3600
    result_ttl_s: int = 600
    # Append-only JSONL of POST /events, fsync'd before the 200 and replayed at start; default
    # <cache_dir>/events/<dataset>.jsonl, so an accepted event survives a restart whatever Redis does.
    events_log: Path | None = None

    # Requests.
    default_m: int = 10
    default_k: int = 10
    max_candidates: int = 26  # listwise letters A-Z
    max_k: int = 100
    max_body_bytes: int = 64 * 1024
    default_deadline_ms: int = 5000
    max_deadline_ms: int = 30000
    default_tasks: tuple[TaskName, ...] = TASKS
    # History lengths in the prompts; default the model manifest's (what the model was tuned with).
    prompt_max_liked: int | None = None
    prompt_max_disliked: int | None = None
    # The hybrid fusion's weight per task (each task needs one) and optionally "backbone", a prior
    # for the backbone's order (service/ranking/fusion.py::hybrid_scores).
    hybrid_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated; empty = no auth

    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = 8080

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("hybrid_weights")
    @classmethod
    def _weights_for_every_task(cls, value: dict[str, float]) -> dict[str, float]:
        if unknown := set(value) - {*TASKS, BACKBONE}:
            raise ValueError(f"weights for {sorted(unknown)}: neither a task {TASKS} nor {BACKBONE!r}")
        if missing := [t for t in TASKS if t not in value]:
            raise ValueError(f"no weight for the tasks {missing}")
        return value

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.artifacts_dir / self.dataset / "model"

    @property
    def resolved_policy_dir(self) -> Path:
        return self.policy_dir or self.resolved_model_dir / "policy" / self.backbone

    @property
    def resolved_events_log(self) -> Path:
        return self.events_log or self.cache_dir / "events" / f"{self.dataset}.jsonl"

    @property
    def serving_dir(self) -> Path:
        """The serving tables the pipeline exported (service.gateway.serving_tables)."""
        return self.serving_tables_dir or self.artifacts_dir / self.dataset / "serving"

    @property
    def backbone_dir(self) -> Path:
        return self.artifacts_dir / self.dataset / "backbones" / self.backbone
