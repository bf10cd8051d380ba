"""The Grafana dashboard and the Prometheus alert rules: valid documents whose every query
names a metric the running platform exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.platform import Platform
from tests.test_metrics import api_samples, metered, run_every_path, worker_samples

__all__ = ["metered"]  # the module-scoped platform fixture, shared by import

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "observability" / "grafana" / "condo-audit.json"
ALERTS = ROOT / "helm" / "condo-audit" / "files" / "prometheus-alerts.yaml"

PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "delta", "deriv",
    "histogram_quantile", "vector", "absent", "min_over_time", "max_over_time", "clamp_min",
    "label_values",
}  # fmt: skip
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool",
}  # fmt: skip
GRAFANA_PANEL_TYPES = {"timeseries", "stat", "gauge", "table", "row", "bargauge", "text"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, matchers, ranges and grouping
    labels removed; identifiers before "(" are functions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    functions = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text))
    unknown = functions - PROMQL_FUNCTIONS - PROMQL_KEYWORDS
    assert not unknown, f"unknown PromQL functions {unknown} in {expr!r}"
    assert text.count("(") == text.count(")"), f"unbalanced parentheses in {expr!r}"
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    # ("max by (x) (...)": the aggregation is not directly followed by its parenthesis)
    return tokens - functions - PROMQL_FUNCTIONS - PROMQL_KEYWORDS


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_dashboard_is_a_valid_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "queue"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in GRAFANA_PANEL_TYPES
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h"))
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            used_vars = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used_vars <= variables, target["expr"]


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    used = {n for e in dashboard_exprs(json.loads(DASHBOARD.read_text())) for n in metric_names(e)}
    for needed in (
        "condo_audit_tasks_total",  # throughput
        "condo_audit_http_request_duration_seconds_bucket",  # latency
        "condo_audit_task_duration_seconds_bucket",
        "condo_audit_queue_messages",  # queue depth and its parts
        "condo_audit_queue_outstanding",
        "condo_audit_workers",  # worker count
        "condo_audit_ratelimit_budget_per_minute",  # budget use
        "condo_audit_provider_requests_total",  # 429s
        "condo_audit_dead_letters_open",
        "condo_audit_dead_letters_total",
    ):
        assert needed in used, needed
    exprs = " ".join(dashboard_exprs(json.loads(DASHBOARD.read_text())))
    assert 'status="429"' in exprs


def test_the_alert_rules_are_valid_and_cover_the_failures() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert metric_names(rule["expr"]), rule["expr"]
    by_metric = {n: rule["alert"] for rule in rules for n in metric_names(rule["expr"])}
    assert "condo_audit_dead_letters_open" in by_metric  # a growing dead-letter queue
    assert any('status="429"' in rule["expr"] for rule in rules)  # provider 429s
    assert "condo_audit_queue_messages" in by_metric  # a queue that does not drain
    assert "condo_audit_workers" in by_metric  # no workers
    assert "condo_audit_provider_circuit_state" in by_metric  # a provider outage


def test_every_query_names_a_metric_the_platform_exports(metered: Platform) -> None:
    run_every_path(metered)
    exported = {name for name, _, _ in api_samples(metered) + worker_samples(metered)}
    queries = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    queries += [rule["expr"] for rule in alert_rules()]
    for expr in queries:
        missing = metric_names(expr) - exported
        assert not missing, f"{expr!r} names metrics nobody exports: {missing}"
