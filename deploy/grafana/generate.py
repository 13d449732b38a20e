"""Generates the Grafana dashboards of the stack from code (grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/generate.py           # rewrites the committed JSON
    .venv/bin/python deploy/grafana/generate.py --check   # exit 1 if the committed JSON is stale

The JSON files under provisioning/dashboards/ are committed so Grafana loads them without Python;
tests/deploy/test_dashboards.py checks they equal this script's output and that every PromQL
expression names a metric the gateway or vLLM really exposes. Edit this file, never the JSON.

Every panel reads the datasource that provisioning/datasources/prometheus.yml creates (uid
`prometheus`). Metric names are the gateway's (service/, prometheus-client) and vLLM's
(vllm/v1/metrics/loggers.py in the installed vllm package; counters get `_total`, histograms
`_bucket`/`_sum`/`_count` when exposed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, LegendDisplayMode, LegendPlacement, SortOrder, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT_DIR = Path(__file__).resolve().parent / "provisioning" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class PanelSpec:
    title: str
    description: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    min_zero: bool = True
    max_value: float | None = None


@dataclass
class RowSpec:
    title: str
    panels: list[PanelSpec] = field(default_factory=list)


def quantiles(bucket: str, by: str, legend_prefix: str = "") -> list[Query]:
    """p50/p95/p99 of a histogram, one series per value of `by` (empty: over everything)."""
    group = f"le, {by}" if by else "le"
    label = f"{legend_prefix}{{{{{by}}}}} " if by else legend_prefix
    return [
        Query(f"histogram_quantile({q}, sum by ({group}) (rate({bucket}[{RATE}])))", f"{label}p{round(q * 100)}".strip())
        for q in QUANTILES
    ]


def stage_quantile(q: float) -> PanelSpec:
    return PanelSpec(
        f"Stage latency p{round(q * 100)} by stage",
        "Time spent in each stage of a rerank: retrieval, history and result cache, each LLM task, fusion.",
        [Query(f"histogram_quantile({q}, sum by (le, stage) (rate(recranker_stage_duration_seconds_bucket[{RATE}])))", "{{stage}}")],
        unit="s",
        width=8,
    )


def gateway_rows() -> list[RowSpec]:
    requests = "recranker_request_duration_seconds_count"
    return [
        RowSpec(
            "Overview",
            [
                PanelSpec(
                    "Reranks/s",
                    "POST /rerank requests per second, all outcomes.",
                    [Query(f'sum(rate({requests}{{route="/rerank"}}[{RATE}]))')],
                    unit="reqps", kind="stat", width=6, height=4,
                ),
                PanelSpec(
                    "Rerank p99",
                    "99th percentile of POST /rerank latency.",
                    [Query(f'histogram_quantile(0.99, sum by (le) (rate(recranker_request_duration_seconds_bucket{{route="/rerank"}}[{RATE}])))')],
                    unit="s", kind="stat", width=6, height=4,
                ),
                PanelSpec(
                    "Degraded share",
                    "Share of reranks answered with a fallback (backbone order, or some LLM tasks dropped).",
                    [Query(f'sum(rate({requests}{{route="/rerank",outcome="degraded"}}[{RATE}])) / sum(rate({requests}{{route="/rerank"}}[{RATE}]))')],
                    unit="percentunit", kind="stat", width=6, height=4, max_value=1,
                ),
                PanelSpec(
                    "History cache hit ratio",
                    "Share of user-history lookups answered by Redis.",
                    [Query(
                        f'sum(rate(recranker_cache_requests_total{{cache="history",result="hit"}}[{RATE}]))'
                        f' / sum(rate(recranker_cache_requests_total{{cache="history"}}[{RATE}]))'
                    )],
                    unit="percentunit", kind="stat", width=6, height=4, max_value=1,
                ),
            ],
        ),
        RowSpec(
            "Traffic",
            [
                PanelSpec(
                    "Request rate by route and outcome",
                    "outcome: ok, degraded (200 with a fallback), client_error (4xx), server_error (5xx).",
                    [Query(f"sum by (route, outcome) (rate({requests}[{RATE}]))", "{{route}} {{outcome}}")],
                    unit="reqps",
                ),
                PanelSpec(
                    "Reranks by method and the serving policy",
                    "What ranked each answer (the response's `fusion`), and the method the loaded serving policy serves by default "
                    "(1 per gateway; docs/serving-policy.md). Answers below the policy's method are fallbacks.",
                    [
                        Query(f"sum by (method) (rate(recranker_reranks_by_method_total[{RATE}]))", "answered by {{method}}"),
                        Query("sum by (method, backbone) (recranker_serving_policy)", "policy: {{method}} on {{backbone}}"),
                    ],
                    unit="short",
                ),
                PanelSpec(
                    "In-flight requests and events",
                    "Requests being answered now (all gateway replicas) and interactions posted to /events per second.",
                    [
                        Query("sum(recranker_inflight_requests)", "in flight"),
                        Query(f"sum(rate(recranker_events_total[{RATE}]))", "events/s"),
                    ],
                ),
            ],
        ),
        RowSpec(
            "Latency",
            [
                PanelSpec(
                    "Request latency by route",
                    "p50, p95 and p99 over all gateway replicas.",
                    quantiles("recranker_request_duration_seconds_bucket", "route"),
                    unit="s",
                    width=24,
                ),
                stage_quantile(0.5),
                stage_quantile(0.95),
                stage_quantile(0.99),
            ],
        ),
        RowSpec(
            "Degradation and LLM answers",
            [
                PanelSpec(
                    "Degradations by reason",
                    "Fallbacks per second by reason (LLM down or slow, deadline, Redis down, ...). The answer is still a 200.",
                    [Query(f"sum by (reason) (rate(recranker_degraded_total[{RATE}]))", "{{reason}}")],
                    unit="ops",
                    width=8,
                ),
                PanelSpec(
                    "LLM errors by task and kind",
                    "Failed or timed-out LLM calls; the task is dropped from the fusion.",
                    [Query(f"sum by (task, kind) (rate(recranker_llm_errors_total[{RATE}]))", "{{task}} {{kind}}")],
                    unit="ops",
                    width=8,
                ),
                PanelSpec(
                    "Repaired LLM answers by task",
                    "Malformed answers replaced by the backbone order.",
                    [Query(f"sum by (task) (rate(recranker_llm_repaired_answers_total[{RATE}]))", "{{task}}")],
                    unit="ops",
                    width=8,
                ),
            ],
        ),
        RowSpec(
            "Caches",
            [
                PanelSpec(
                    "Cache hit ratio",
                    "Hits over all lookups, per cache (history: user histories; result: whole rerank answers).",
                    [Query(
                        f'sum by (cache) (rate(recranker_cache_requests_total{{result="hit"}}[{RATE}]))'
                        f" / sum by (cache) (rate(recranker_cache_requests_total[{RATE}]))",
                        "{{cache}}",
                    )],
                    unit="percentunit",
                    max_value=1,
                ),
                PanelSpec(
                    "Cache lookups by result",
                    "error: Redis unreachable, the backing store answered instead.",
                    [Query(f"sum by (cache, result) (rate(recranker_cache_requests_total[{RATE}]))", "{{cache}} {{result}}")],
                    unit="ops",
                ),
            ],
        ),
    ]


def vllm_rows() -> list[RowSpec]:
    return [
        RowSpec(
            "Load",
            [
                PanelSpec(
                    "Requests running and waiting",
                    "Per vLLM replica. Waiting requests that stay above zero mean the replica is saturated: add replicas.",
                    [
                        Query("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
                        Query("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
                    ],
                ),
                PanelSpec(
                    "KV-cache usage",
                    "Share of the KV cache in use per replica (1 = full; requests then wait or are preempted).",
                    [Query("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}")],
                    unit="percentunit",
                    max_value=1,
                ),
                PanelSpec(
                    "Prefix-cache hit ratio",
                    "Prompt tokens served from the prefix cache over prompt tokens queried. A user's prompts share "
                    "their history prefix, so this should stay high.",
                    [Query(
                        f"sum by (instance) (rate(vllm:prefix_cache_hits_total[{RATE}]))"
                        f" / sum by (instance) (rate(vllm:prefix_cache_queries_total[{RATE}]))",
                        "{{instance}}",
                    )],
                    unit="percentunit",
                    max_value=1,
                ),
                PanelSpec(
                    "Tokens/s",
                    "Prompt and generated tokens per second, all replicas.",
                    [
                        Query(f"sum(rate(vllm:prompt_tokens_total[{RATE}]))", "prompt"),
                        Query(f"sum(rate(vllm:generation_tokens_total[{RATE}]))", "generation"),
                    ],
                ),
            ],
        ),
        RowSpec(
            "Latency",
            [
                PanelSpec(
                    "Time to first token",
                    "The gateway asks for one token per prompt, so this is most of an LLM task's time.",
                    quantiles("vllm:time_to_first_token_seconds_bucket", ""),
                    unit="s",
                ),
                PanelSpec(
                    "End-to-end request latency",
                    "From arrival at vLLM to the last token.",
                    quantiles("vllm:e2e_request_latency_seconds_bucket", ""),
                    unit="s",
                ),
                PanelSpec(
                    "Queue time",
                    "Time a request waited before it was scheduled.",
                    quantiles("vllm:request_queue_time_seconds_bucket", ""),
                    unit="s",
                ),
                PanelSpec(
                    "Finished requests by reason",
                    "stop, length, abort, ...",
                    [Query(f"sum by (finished_reason) (rate(vllm:request_success_total[{RATE}]))", "{{finished_reason}}")],
                    unit="reqps",
                ),
            ],
        ),
    ]


def build_panel(spec: PanelSpec, panel_id: int):
    panel = Stat() if spec.kind == "stat" else Timeseries()
    panel = panel.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
    panel = panel.unit(spec.unit).span(spec.width).height(spec.height)
    if spec.min_zero:
        panel = panel.min(0)
    if spec.max_value is not None:
        panel = panel.max(spec.max_value)
    if spec.kind == "stat":
        panel = panel.graph_mode(BigValueGraphMode.AREA).reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    else:
        panel = panel.legend(
            VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
        ).tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    for n, query in enumerate(spec.queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + n)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        panel = panel.with_target(target)
    return panel


def build_dashboard(uid: str, title: str, description: str, rows: list[RowSpec]):
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["recranker", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .readonly()
    )
    panel_id = 1
    for row in rows:
        board = board.with_row(Row(row.title).id(panel_id))
        panel_id += 1
        for spec in row.panels:
            board = board.with_panel(build_panel(spec, panel_id))
            panel_id += 1
    return board.build()


def dashboards() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    boards = {
        "recranker-gateway.json": build_dashboard(
            "recranker-gateway",
            "RecRanker / Gateway",
            "POST /rerank traffic, latency by route and stage, degradations, caches and LLM answers.",
            gateway_rows(),
        ),
        "recranker-vllm.json": build_dashboard(
            "recranker-vllm",
            "RecRanker / vLLM",
            "The LLM servers behind the gateway: load, KV and prefix cache, time to first token, latency.",
            vllm_rows(),
        ),
    }
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(board) + "\n" for name, board in boards.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the generated one")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in dashboards().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale (run deploy/grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
