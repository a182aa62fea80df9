"""The Grafana dashboard and the Prometheus rules kept in deploy/observability/, read as their users
would: the rule file's structure, the queries of both, and the metric names those queries select,
for the unit test (against the in-process registries) and the integration test (against the /metrics
of real processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"

# PromQL words that are not metric names: functions, aggregations and their modifiers.
KEYWORDS = frozenset({
    "sum", "count", "min", "max", "avg", "by", "without", "rate", "increase", "irate", "delta", "deriv",
    "histogram_quantile", "clamp_min", "clamp_max", "offset", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "abs", "topk", "bottomk", "quantile", "absent", "time", "vector", "scalar",
})
# Series Prometheus makes itself, on no /metrics page.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rule_expressions() -> dict[str, str]:
    """Each alerting or recording rule's name and expression."""
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in rules()["groups"]
            for rule in group["rules"]}


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels that query (rows left out, the panels of collapsed rows included)."""
    found = []
    for panel in dashboard()["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [panel for panel in found if panel.get("targets")]


def dashboard_expressions() -> dict[str, str]:
    """Each query of the dashboard, by "<panel title> <refId>"."""
    return {f"{panel['title']} {target['refId']}": target["expr"] for panel in dashboard_panels()
            for target in panel["targets"]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
    `by (...)` lists, numbers, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        following = text[match.end():].lstrip()
        if word in KEYWORDS or following.startswith("(") or DURATION.match(word):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number, e.g. 1e3
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """The series names a Prometheus text page offers to a query: each family's TYPE line gives its
    name and kind (a histogram's series are its _bucket, _sum and _count)."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {name, f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def named_metrics() -> dict[str, set[str]]:
    """Every metric name the rules and the dashboard select, with where each is named."""
    where: dict[str, set[str]] = {}
    for source, expressions in (("rule", rule_expressions()), ("panel", dashboard_expressions())):
        for title, expr in expressions.items():
            for name in metric_names(expr):
                where.setdefault(name, set()).add(f"{source} {title}")
    return where
