"""The Grafana dashboard and the Prometheus example under deploy/ match what txfast exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from txfast.metrics import METRIC_NAMES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HISTOGRAMS = {
    "txfast_batch_size",
    "txfast_stage_seconds",
    "txfast_end_to_end_latency_seconds",
    "txfast_score",
}


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _referenced(expr: str) -> set[str]:
    return set(re.findall(r"\btxfast_[a-z0-9_]+", expr))


def _exported_series() -> set[str]:
    out = set()
    for name in METRIC_NAMES:
        if name in HISTOGRAMS:
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "txfast.json").read_text())


def test_the_dashboard_is_a_valid_grafana_model(dashboard: dict) -> None:
    assert dashboard["uid"] and dashboard["title"] == "txfast"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "table", "bargauge", "gauge"}
        assert p["targets"], f"{p['title']} has no query"
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_the_dashboard_uses_only_exported_metrics_and_covers_them(dashboard: dict) -> None:
    used = set().union(*(_referenced(e) for e in _exprs(dashboard)))
    assert used, "the dashboard queries txfast metrics"
    assert used <= _exported_series(), f"unknown: {sorted(used - _exported_series())}"
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families == set(METRIC_NAMES), f"not shown: {sorted(set(METRIC_NAMES) - families)}"


def test_the_prometheus_example_scrapes_the_metrics_paths() -> None:
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    jobs = re.findall(r"job_name:\s*(\S+)", text)
    assert jobs == ["txfast-scorer", "txfast-api"]
    assert text.count("metrics_path: /metrics") == 2
    assert re.findall(r'targets: \["([^"]+)"\]', text) == ["127.0.0.1:9400", "127.0.0.1:8000"]
