"""Prompt tokens as the vLLM server itself counts them, read from its Prometheus text: what a
scenario sent (`vllm:prompt_tokens_total`) and what it had to compute, the prompt tokens its prefix
cache did not hold (`vllm:prefix_cache_queries_total` - `vllm:prefix_cache_hits_total`, both in
tokens). The bench reads them before and after a scenario, so the difference is that scenario's."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

_KEYS = {"vllm:prompt_tokens_total": "prompt", "vllm:prefix_cache_queries_total": "queries", "vllm:prefix_cache_hits_total": "hits"}


@dataclass(frozen=True)
class PromptTokenCounters:
    prompt: float  # prompt tokens received
    queries: float  # prompt tokens looked up in the prefix cache
    hits: float  # of those, found there

    @property
    def computed(self) -> float:
        return self.queries - self.hits

    def __sub__(self, earlier: PromptTokenCounters) -> PromptTokenCounters:
        return PromptTokenCounters(self.prompt - earlier.prompt, self.queries - earlier.queries, self.hits - earlier.hits)

    def per(self, users: int) -> dict[str, float]:
        """Per user: tokens sent and tokens computed (those the prefix cache did not hold)."""
        n = max(1, users)
        return {"prompt_tokens_per_user": round(self.prompt / n, 1), "computed_prompt_tokens_per_user": round(self.computed / n, 1)}


def parse_counters(metrics_text: str) -> PromptTokenCounters | None:
    """Sums each counter over its label sets (one per served model name), or None when the server
    exports one of them not at all: a missing counter gives no reading rather than a made-up 0."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in _KEYS:
                totals[_KEYS[sample.name]] = totals.get(_KEYS[sample.name], 0.0) + sample.value
    return PromptTokenCounters(**totals) if len(totals) == len(_KEYS) else None


async def read_counters(http: httpx.AsyncClient, llm_base: str) -> PromptTokenCounters | None:
    """The server's counters now, or None when its /metrics cannot be read or lacks one of them (the
    bench then reports no token numbers instead of failing the whole run)."""
    try:
        resp = await http.get(f"{llm_base}/metrics", timeout=10)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_counters(resp.text)
