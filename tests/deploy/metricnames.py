"""Metric names on both sides of the dashboards: the names a PromQL expression reads, the names a
Prometheus text exposition offers, and the names the installed vLLM package defines.

Shared by tests/deploy (no servers) and tests/integration/test_deploy_prometheus.py (a running
gateway, a real Prometheus and a real vLLM server).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "deploy" / "grafana" / "provisioning" / "dashboards"
INSTALL_HINT = "run deploy/install-tools.sh (or `make install` for the PyPI tools)"

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "start", "end",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, aggregations, label names and keywords removed).

    Good enough for the expressions a dashboard holds; `{__name__=...}` selectors are not supported
    and are reported as an error so they cannot slip through unchecked.
    """
    if "__name__" in expr:
        raise ValueError(f"__name__ selectors are not supported: {expr}")
    text = _STRING.sub('""', expr)
    text = _SELECTOR.sub("", text)
    text = _LABEL_LIST.sub("", text)
    text = _RANGE.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!=|!~|=)")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time


def promql_label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by ({route="..."}, by (le, stage), ...)."""
    text = _STRING.sub('""', expr)
    names = set()
    for selector in _SELECTOR.findall(text):
        names |= {m.group(1) for m in _MATCHER.finditer(selector)}
    for clause in _LABEL_LIST.finditer(text):
        inner = clause.group(0)[clause.group(0).index("(") + 1 : -1]
        names |= {n.strip() for n in inner.split(",") if n.strip()}
    return names


def sample_labels(exposition: str) -> dict[str, set[str]]:
    """Series name -> the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        name = name.split()[0]
        labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', rest.rpartition("}")[0])) if rest else set()
        out.setdefault(name, set()).update(labels)
    return out


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: dict) -> Iterable[dict]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every PromQL target of every dashboard."""
    out = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                if "expr" in target:
                    out.append((name, panel.get("title", ""), target["expr"]))
    return out


def dashboard_metric_names() -> set[str]:
    return set().union(*(promql_metric_names(expr) for _, _, expr in dashboard_expressions()))


def exposed_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, including families without samples yet
    (a labelled counter nobody incremented still has its # TYPE line)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names |= series_names(family, kind.strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def series_names(family: str, kind: str) -> set[str]:
    """The series a metric of this kind is scraped as (prometheus_client's conventions)."""
    if kind == "counter":
        base = family.removesuffix("_total")
        return {base + "_total", base + "_created"}
    if kind == "histogram":
        return {family + s for s in ("_bucket", "_sum", "_count", "_created")}
    if kind == "summary":
        return {family, family + "_sum", family + "_count", family + "_created"}
    return {family}


_VLLM_KINDS = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram",
               "Gauge": "gauge", "Counter": "counter", "Histogram": "histogram"}


def vllm_defined_names(vllm_dir: Path) -> set[str]:
    """Series names of every `vllm:` metric the installed vLLM package defines (the Gauge/Counter/
    Histogram constructors in its source, e.g. vllm/v1/metrics/loggers.py), as Prometheus scrapes them."""
    names: set[str] = set()
    for path in vllm_dir.rglob("*.py"):
        source = path.read_text(errors="replace")
        if '"vllm:' not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            kind = _VLLM_KINDS.get(callee or "")
            if kind is None:
                continue
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant) and str(kw.value.value).startswith("vllm:"):
                    names |= series_names(kw.value.value, kind)
    return names
