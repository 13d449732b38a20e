"""Prometheus metrics of one gateway, on its own registry (no process-global state, so tests and
several apps in one process do not collide). Names are the contract with deploy/'s dashboards."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the exposition size and no dashboard reads them.
disable_created_metrics()

# Sub-millisecond gateway work up to multi-second CPU LLM calls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "recranker_request_duration_seconds", "Request latency by route and outcome", ["route", "outcome"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram("recranker_stage_duration_seconds", "Latency of each rerank stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache_requests = Counter("recranker_cache_requests", "Cache lookups by cache and result (hit, miss, error)", ["cache", "result"], registry=r)
        self.degraded = Counter("recranker_degraded", "Responses that used a fallback, by reason", ["reason"], registry=r)
        self.llm_errors = Counter("recranker_llm_errors", "LLM tasks dropped, by task and kind (deadline, error, invalid)", ["task", "kind"], registry=r)
        self.llm_repaired = Counter("recranker_llm_repaired_answers", "LLM answers that needed repair, by task", ["task"], registry=r)
        self.inflight = Gauge("recranker_inflight_requests", "Requests being served", registry=r)
        self.policy = Gauge("recranker_serving_policy", "The serving policy loaded (1): the method /rerank serves by default", ["method", "backbone", "dataset", "source"], registry=r)
        self.methods = Counter("recranker_reranks_by_method", "Reranks answered, by the method that ranked them (the `fusion` of the response)", ["method"], registry=r)
        self.events = Counter("recranker_events", "Interaction events accepted by POST /events", registry=r)
