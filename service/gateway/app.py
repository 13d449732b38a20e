"""The FastAPI app, built by `create_app(settings)`; the lifespan opens and closes the Redis pool,
the vLLM client and the retrieval backbone, and loads the backing store once.

Routes: POST /rerank, POST /events, POST /v1/retrieve (the embedded backbone over HTTP, the
remote-retrieval protocol), GET /healthz, GET /readyz, GET /metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.backbones.scorers import SequenceScorer
from service.gateway.admission import LLMAdmission
from service.gateway.cache import KeyValueCache, RedisCache, cache_from_url
from service.gateway.errors import (
    error_responses,
    http_error_handler,
    rejected_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from service.gateway.events import EventBus
from service.gateway.history import HistoryCache, ScoreCache
from service.gateway.intake import EventIntake
from service.gateway.logs import configure_logging, request_id_var
from service.gateway.metrics import GatewayMetrics
from service.gateway.policy_runtime import PolicyLoadError, PolicyRuntime, load_policy_runtime
from service.gateway.rejections import Rejected, Unauthenticated, UnknownEntity
from service.gateway.reranker import RerankService
from service.gateway.retrieval import EmbeddedRetriever, RemoteRetriever, RetrievalError, Retriever
from service.gateway.schemas import EventsRequest, EventsResponse, RerankRequest, RerankResponse, RetrieveRequest, RetrieveResponse
from service.gateway.serving_tables import ServingTablesError, read_serving_tables
from service.gateway.settings import GatewaySettings
from service.gateway.store import EventsLogError, InteractionStore
from service.gateway.warmup import WarmUpResult, warm_up
from service.llm.client import LLMSettings, VLLMClient
from service.ranking.engine import EngineConfig, RankingEngine
from service.ranking.item_tokens import ItemTokensError, attach_token_table
from service.ranking.prompts import PromptConfig

log = logging.getLogger("recranker.gateway")


@dataclass
class Components:
    settings: GatewaySettings
    store: InteractionStore
    cache: KeyValueCache
    histories: HistoryCache
    retriever: Retriever
    embedded: EmbeddedRetriever | None
    llm: VLLMClient
    service: RerankService
    events: EventBus | None = None  # None with the in-process cache (a single gateway)
    data_fingerprint: str | None = None  # of the serving tables: the data served


class StartupError(RuntimeError):
    """The gateway cannot start: a missing artefact, named with the command that makes it."""


def prompt_config_of(model_dir: Path, dataset: str, max_liked: int | None = None, max_disliked: int | None = None) -> PromptConfig:
    """The prompt settings the model was tuned with (its manifest), so serving asks what it learned;
    the history lengths may be overridden."""
    manifest = model_dir / "manifest.json"
    cfg = json.loads(manifest.read_text()).get("prompt_config") if manifest.is_file() else None
    config = PromptConfig(**cfg) if cfg else PromptConfig(domain="book" if dataset == "bookcrossing" else "movie")
    try:  # a model tuned with item tokens names items by them; its tokenizer says which have one
        config = attach_token_table(config, model_dir)
    except ItemTokensError as exc:
        raise StartupError(str(exc)) from None
    overrides = {k: v for k, v in (("max_liked", max_liked), ("max_disliked", max_disliked)) if v is not None}
    return dataclasses.replace(config, **overrides)


def model_manifest(model_dir: Path) -> dict:
    manifest = model_dir / "manifest.json"
    try:
        return json.loads(manifest.read_text()) if manifest.is_file() else {}
    except (OSError, ValueError) as exc:
        raise StartupError(f"{manifest}: unreadable model manifest ({exc}); rerun `make tune`") from None


def check_same_data(what: Path, verb: str, recorded: str | None, dataset: str, fingerprint: str, tables_dir: Path, fix: str, setting: str) -> None:
    """An artefact fitted on other data than the serving tables hold would rank (or retrieve) another
    catalogue's items: refuse to start, naming both fingerprints and what to run. An artefact that
    records no fingerprint (older exports) is let through; shapes are still checked where it loads."""
    if recorded and recorded != fingerprint:
        raise StartupError(f"{what} was {verb} on data {recorded[:12]}, the serving tables {tables_dir} hold {dataset} {fingerprint[:12]}; "
                           f"run `make serve DATASET=... DATA_PATH=...` for those data (it {fix}), or set {setting}")


def backbone_data_fingerprint(backbone_dir: Path) -> str | None:
    try:
        return json.loads((backbone_dir / "metrics.json").read_text()).get("dataset_fingerprint")
    except (OSError, ValueError):
        return None


def build_components(settings: GatewaySettings) -> Components:
    if not (settings.backbone_dir / "item_vectors.npy").is_file() and settings.retrieval == "embedded":
        raise StartupError(f"{settings.backbone_dir}: no exported backbone; run `python -m training backbone --name {settings.backbone}` (or `make tune`)")
    try:
        tables = read_serving_tables(settings.serving_dir)
        manifest = model_manifest(settings.resolved_model_dir)
        check_same_data(settings.resolved_model_dir, "tuned", manifest.get("data_fingerprint"), tables.dataset, tables.fingerprint, settings.serving_dir,
                        "tunes a model on them", "RECRANKER_MODEL_DIR")
        check_same_data(settings.backbone_dir, "trained", backbone_data_fingerprint(settings.backbone_dir), tables.dataset, tables.fingerprint,
                        settings.serving_dir, "trains the backbone on them", "RECRANKER_BACKBONE")
        store = InteractionStore.from_tables(tables, settings.resolved_events_log)
        policy = load_policy_runtime(settings.resolved_policy_dir, settings.backbone_dir.parent, [u["user_id"] for u in tables.users],
                                     [it["item_id"] for it in tables.items], tables.fingerprint)
    except (ServingTablesError, EventsLogError, PolicyLoadError) as exc:
        raise StartupError(str(exc)) from None
    if policy is not None and any(isinstance(sc, SequenceScorer) for sc in policy.features.scorers.values()):
        import torch

        torch.set_num_threads(1)  # one user's ~50-token history: threads cost more than they give, and requests run side by side
    embedded = EmbeddedRetriever.from_artifacts(settings.backbone_dir, settings.serving_dir) if (settings.backbone_dir / "item_vectors.npy").is_file() else None
    if settings.retrieval == "remote":
        if not settings.retrieval_url:
            raise StartupError("RECRANKER_RETRIEVAL=remote needs RECRANKER_RETRIEVAL_URL")
        retriever: Retriever = RemoteRetriever(settings.retrieval_url, settings.retrieval_timeout_s)
    else:
        retriever = embedded
    cache = cache_from_url(settings.redis_url, settings.redis_timeout_s)
    histories = HistoryCache(cache, store, settings.cache_prefix, settings.dataset, settings.history_ttl_s)
    scores = ScoreCache(cache, settings.cache_prefix, settings.dataset, settings.result_ttl_s)
    model_dir = settings.resolved_model_dir
    prompt_cfg = prompt_config_of(model_dir, settings.dataset, settings.prompt_max_liked, settings.prompt_max_disliked)
    # With the model's chat template a task's prompts go to vLLM as one request, as token ids on
    # the block layout the model was tuned on; without the model folder here (a gateway apart from
    # the model), one chat request per prompt.
    llm = VLLMClient.for_model(LLMSettings(base_url=settings.llm_url, model=settings.llm_model, timeout_s=settings.llm_timeout_s,
                                           max_concurrency=settings.llm_max_concurrency, max_connections=settings.llm_max_concurrency),
                               model_dir, prompt_cfg.token_block)
    engine = RankingEngine(llm, EngineConfig(prompt=prompt_cfg))
    service = RerankService(
        settings=settings, store=store, histories=histories, scores=scores, retriever=retriever, engine=engine,
        # the model's run key names it in answers and cache keys (a retuned model's scores are new)
        metrics=GatewayMetrics(), model_name=manifest.get("run_key") or settings.llm_model, policy=policy,
        admission=LLMAdmission(settings.llm_slots, settings.llm_max_waiting, quantile=settings.llm_admission_quantile),
    )
    events = EventBus(settings.redis_url, settings.cache_prefix, settings.dataset, store, histories) if isinstance(cache, RedisCache) else None
    return Components(settings, store, cache, histories, retriever, embedded, llm, service, events, tables.fingerprint)


class RequestContext:
    """Pure ASGI middleware: request id, body size limit, in-flight gauge, latency by route and
    outcome, and one JSON log line per request. (Starlette's BaseHTTPMiddleware costs more.)"""

    def __init__(self, app, settings: GatewaySettings, metrics: GatewayMetrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.log = logging.getLogger("recranker.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        rid = (headers.get(b"x-request-id") or b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = {"code": 500, "degraded": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", rid.encode("latin-1")))
                message["headers"] = raw
                status["degraded"] = any(k == b"x-degraded" for k, _ in raw)
            await send(message)

        path = scope.get("path", "")
        route = path if path in ("/rerank", "/events", "/v1/retrieve", "/healthz", "/readyz", "/metrics") else "other"
        self.metrics.inflight.inc()
        try:
            length = int(headers.get(b"content-length", b"0") or 0)
            if length > self.settings.max_body_bytes:
                await self._reject_too_large(send_wrapper, rid)
                return
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                # Read the body here, up to the limit, whatever the transfer encoding: a chunked
                # body over the limit is a 413 before any route parses it.
                first = await self._read_body(receive)
                if first is None:
                    await self._reject_too_large(send_wrapper, rid)
                    return
                receive = self._replay(first, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            seconds = time.perf_counter() - started
            code = status["code"]
            outcome = "server_error" if code >= 500 else "client_error" if code >= 400 else "degraded" if status["degraded"] else "ok"
            if route not in ("/metrics", "/healthz", "/readyz"):  # probes would drown the request metrics
                self.metrics.request_seconds.labels(route, outcome).observe(seconds)
                self.log.info("request", extra={"method": scope.get("method"), "path": path, "status": code, "outcome": outcome, "duration_ms": round(seconds * 1000, 3)})
            request_id_var.reset(token)

    async def _read_body(self, receive) -> dict | None:
        """The whole body as one message (or the disconnect that cut it short); None past the limit."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.settings.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    @staticmethod
    def _replay(first: dict, receive):
        sent = False

        async def replayed():
            nonlocal sent
            if not sent:
                sent = True
                return first
            return await receive()

        return replayed

    async def _reject_too_large(self, send, rid: str) -> None:
        body = json.dumps({"error": {"code": "request_too_large", "message": f"the body exceeds {self.settings.max_body_bytes} bytes", "details": None}, "request_id": rid}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def policy_summary(runtime: PolicyRuntime | None) -> dict:
    """What /readyz and the start-up line say of the policy: its method and what it needs."""
    if runtime is None:
        return {"policy": None, "method": "hybrid", "needs_llm": True}
    p = runtime.policy
    return {"policy": f"{p.backbone}-m{p.m}", "method": p.method, "needs_llm": p.needs_llm, "tasks": list(p.tasks),
            "feature_backbones": list(p.feature_backbones)}


def set_policy_metric(metrics: GatewayMetrics, runtime: PolicyRuntime | None, settings: GatewaySettings) -> None:
    method = runtime.policy.method if runtime is not None else "hybrid"
    metrics.policy.labels(method, settings.backbone, settings.dataset, "policy" if runtime is not None else "none").set(1)


async def _warm(components: Components) -> WarmUpResult:
    settings = components.settings
    result = await warm_up(components.service, settings.llm_warmup_users, settings.llm_timeout_s, settings.llm_warmup_timeout_s)
    log.info("llm warm", extra={"users_answered": result.users_answered, "attempts": result.attempts, "seconds": round(result.seconds, 3)})
    return result


def create_app(settings: GatewaySettings | None = None, components: Components | None = None) -> FastAPI:
    """The gateway. `components` built beforehand (`build_components`, or fakes in tests) are used
    as they are; without them the lifespan builds them from `settings`."""
    settings = settings or (components.settings if components else GatewaySettings())
    configure_logging(settings.log_level)
    prebuilt = components

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        components = prebuilt or build_components(settings)
        # The store is ~10^5 long-lived objects: move them out of the collector's reach, or every
        # full collection walks them all (pauses of ~100 ms seen as the p99 of cheap requests).
        gc.collect()
        gc.freeze()
        components.service.metrics = app.state.metrics
        app.state.components = components
        follower = None
        if components.events is not None:
            await components.events.catch_up()
            follower = asyncio.create_task(components.events.follow())
        # the warm-up task (None when off): /readyz says `warming` until it is done
        warmer = app.state.llm_warm_up = asyncio.create_task(_warm(components)) if settings.llm_warmup_users else None
        log.info("gateway ready", extra={"dataset": settings.dataset, "data_fingerprint": components.data_fingerprint, "model": components.service.model_name,
                                          "backbone": settings.backbone, "cache": components.cache.name,
                                          "llm": settings.llm_url, "retrieval": settings.retrieval, **policy_summary(components.service.policy)})
        set_policy_metric(app.state.metrics, components.service.policy, settings)
        try:
            yield
        finally:
            if warmer is not None:
                warmer.cancel()
                await asyncio.wait([warmer], timeout=5)
            if follower is not None:
                components.events.stop()
                follower.cancel()
                await asyncio.wait([follower], timeout=5)
            # Each close is bounded: a dependency that does not answer must not hold the shutdown.
            closers = [components.llm.aclose(), components.retriever.aclose(), components.cache.aclose()]
            if components.events is not None:
                closers.insert(0, components.events.aclose())
            for close in closers:
                try:
                    await asyncio.wait_for(close, timeout=5)
                except (TimeoutError, OSError) as exc:
                    log.warning("a client did not close cleanly", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})

    # With API keys set, the schema and the docs need a key too (served below); otherwise FastAPI's.
    protected = bool(settings.api_keys)
    app = FastAPI(title="RecRanker gateway", version="0.1.0", lifespan=lifespan,
                  openapi_url=None if protected else "/openapi.json", docs_url=None if protected else "/docs", redoc_url=None)
    app.state.metrics = GatewayMetrics()
    app.state.settings = settings
    app.add_exception_handler(Rejected, rejected_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(RequestContext, settings=settings, metrics=app.state.metrics)

    def components(request: Request) -> Components:
        return request.app.state.components

    def authorized(request: Request) -> None:
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
            raise Unauthenticated("unauthorized", "a valid API key is required: Authorization: Bearer <key>")

    if protected:
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorized)])
        async def openapi_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorized)])
        async def docs() -> Response:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="RecRanker gateway")

    @app.post("/rerank", response_model=RerankResponse, dependencies=[Depends(authorized)], responses=error_responses(400, 401, 404, 413, 422, 429, 503))
    async def rerank(body: RerankRequest, request: Request, response: Response, c: Components = Depends(components)) -> RerankResponse:
        result = await c.service.rerank(body, request.state.request_id)
        if result.degraded:
            response.headers["X-Degraded"] = ",".join(result.degraded_reasons)
        return result

    @app.post("/events", response_model=EventsResponse, dependencies=[Depends(authorized)], responses=error_responses(400, 401, 404, 413, 422, 503))
    async def events(body: EventsRequest, c: Components = Depends(components)) -> EventsResponse:
        return await EventIntake(c.store, c.histories, c.service.metrics, c.events).accept(body)

    @app.post("/v1/retrieve", response_model=RetrieveResponse, dependencies=[Depends(authorized)], responses=error_responses(400, 401, 404, 413, 422))
    async def retrieve(body: RetrieveRequest, c: Components = Depends(components)) -> RetrieveResponse:
        if c.embedded is None:
            raise UnknownEntity("not_available", "this gateway has no embedded backbone")
        if not c.store.has_user(body.user_id):
            raise UnknownEntity("unknown_user", f"user {body.user_id!r} is not known to this gateway")
        try:
            got = await c.embedded.top_m(body.user_id, body.m, set(body.exclude))
        except RetrievalError as exc:
            raise UnknownEntity("unknown_user", str(exc)) from None
        return RetrieveResponse(items=[{"item_id": i, "score": s} for i, s in zip(got.item_ids, got.scores)])

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "a dependency (cache or LLM) is down, or the LLM is still warming up; `checks` names it"}})
    async def readyz(request: Request, c: Components = Depends(components)) -> JSONResponse:
        warmer = request.app.state.llm_warm_up
        llm = "down" if not await c.llm.healthy() else ("ok" if warmer is None or warmer.done() else "warming")
        checks = {"cache": "ok" if await c.cache.ping() else "down", "llm": llm}
        policy = policy_summary(c.service.policy)
        # The LLM gates readiness only when the default request calls it; otherwise it serves the
        # requests that ask for an LLM method, and its state is reported beside.
        needs = ["cache", "llm"] if policy["needs_llm"] else ["cache"]
        ready = all(checks[n] == "ok" for n in needs)
        body = {"status": "ready" if ready else "not_ready", "checks": checks, "needs": needs, "dataset": settings.dataset,
                "served_data_fingerprint": c.data_fingerprint, "model": c.service.model_name, **policy}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}})
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: documented_limits(app, settings)
    return app


def documented_limits(app: FastAPI, settings: GatewaySettings) -> dict:
    """FastAPI's schema with the limits this gateway enforces from its settings written in, so a
    client (or a schema-driven test) knows them without reading the code."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        props = schema["components"]["schemas"]["RerankRequest"]["properties"]
        _bound(props["k"], maximum=settings.max_k)
        _bound(props["m"], maximum=settings.max_candidates)
        _bound(props["deadline_ms"], maximum=settings.max_deadline_ms)
        _bound(props["candidates"], minItems=1, maxItems=settings.max_candidates, uniqueItems=True)
        body = f"Bodies over {settings.max_body_bytes} bytes are refused with 413."
        for path in schema["paths"].values():
            for op in path.values():
                if "requestBody" in op:
                    op["description"] = f"{op['description']} {body}" if op.get("description") else body
        app.openapi_schema = schema
    return app.openapi_schema


def _bound(prop: dict, **limits) -> None:
    """Adds `limits` to a property, inside its non-null branch when it is optional (anyOf)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(limits)
