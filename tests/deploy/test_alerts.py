"""Alerts and the dashboard: Prometheus' own `promtool` checks the rules and runs every alert
against series that must fire it and series that must not; every metric the rules and the
Grafana dashboard name is one serving/metrics.py exports; the gauges read from the store
follow the latest monitoring run on a real SQLite store."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import debian_tool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy/prometheus"
DASHBOARD = ROOT / "deploy/grafana/riskloop.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every scrape target


def promtool() -> str:
    return debian_tool("promtool", "prometheus")


def exported() -> set[str]:
    """Every sample name serving/metrics.py can export."""
    from serving import metrics

    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
    return names


def named_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers not followed by `(`, not labels,
    keywords or label values)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))
    return {w for w in words if w not in {"and", "or", "unless", "bool", "offset", "le", "inf"}}


def rule_exprs() -> list[str]:
    import yaml

    doc = yaml.safe_load((PROM / "riskloop-rules.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def test_rules_are_valid_and_every_alert_fires_only_when_it_should():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "riskloop-rules.yml"], cwd=PROM,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([tool, "test", "rules", "riskloop-rules.test.yml"], cwd=PROM,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    config = subprocess.run([tool, "check", "config", "prometheus.yml"], cwd=PROM,
                            capture_output=True, text=True)  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_test():
    import yaml

    rules = {r["alert"] for g in yaml.safe_load((PROM / "riskloop-rules.yml").read_text())["groups"]
             for r in g["rules"]}  # fmt: skip
    tests = yaml.safe_load((PROM / "riskloop-rules.test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    quiet = {
        a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if not a["exp_alerts"]
    }
    assert rules - fired == set(), "alerts never shown to fire"
    assert rules - quiet == set(), "alerts never shown to stay quiet"


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_rules_and_dashboard_name_only_exported_metrics(source):
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    names = set().union(*(named_metrics(e) for e in exprs))
    assert names, "no metric found: the parser is broken"
    assert {n for n in names if n.startswith("riskloop_")}, names
    unknown = names - exported() - PROMETHEUS_OWN
    assert unknown == set(), f"{source} name metrics riskloop does not export: {sorted(unknown)}"
    # the parser would see a misspelt metric (the check above can fail)
    assert named_metrics('sum(rate(riskloop_request_total{status=~"5.."}[5m]))') == {
        "riskloop_request_total"
    }


def test_monitoring_gauges_follow_the_latest_run_in_the_store(tmp_path):
    from monitoring import records
    from serving import metrics
    from serving.store import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    upgrade(url)
    engine = make_engine(url)
    facts = metrics.MonitorFacts(engine)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, labels)

    facts.refresh(0.0)  # no run yet: nothing claimed
    assert sample("riskloop_champion_version", version="3") in (None, 0.0)
    when = datetime(2026, 12, 1, 12, tzinfo=UTC)
    for i, (version, retrain) in enumerate([("3", False), ("4", True)]):
        records.record_run(engine, {
            "created_at": when + timedelta(hours=i), "status": "retrain" if retrain else "no_retrain",
            "retrain": retrain, "reasons": [], "model_version": version, "rows": 500,
            "labelled_rows": 0, "summary": {},
        })  # fmt: skip
        facts.refresh(1000.0 * (i + 1))
        assert sample("riskloop_champion_version", version=version) == 1.0
        assert sample("riskloop_monitor_retrain") == float(retrain)
        assert (
            sample("riskloop_monitor_last_run_timestamp_seconds")
            == (when + timedelta(hours=i)).timestamp()
        )
    assert sample("riskloop_champion_version", version="3") == 0.0  # the old champion let go
    engine.dispose()
