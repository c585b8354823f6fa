"""The dashboard, the alert rules, Prometheus's and Grafana's provisioning and the compose
file agree with each other and with the metrics infra/metrics.py exports."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from blobledger.infra import metrics

INFRA = Path(metrics.__file__).resolve().parent
FILES = INFRA / "observability"
PYPROJECT = INFRA.parent / "pyproject.toml"

METRIC_NAME = re.compile(r"\bblobledger_[a-zA-Z0-9_]+")
RECORDED_NAME = re.compile(r"\bblobledger:[a-zA-Z0-9_:]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series(wrappers: Iterable[MetricWrapperBase]) -> dict[str, str]:
    """Series name -> the family it belongs to, as Prometheus stores them."""
    out: dict[str, str] = {}
    for wrapper in wrappers:
        family = next(iter(wrapper.describe()))
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = family.name
    return out


def expressions(node: Any) -> Iterator[str]:
    """Every ``expr`` string anywhere in a parsed JSON/YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def unknown_metrics(exprs: Iterable[str]) -> set[str]:
    exported = exported_series(metrics.ALL)
    return {name for e in exprs for name in METRIC_NAME.findall(e) if name not in exported}


def load_dashboard(text: str | None = None) -> Any:
    return json.loads(text if text is not None else (FILES / "dashboard.json").read_text())


def load_rules() -> Any:
    return yaml.safe_load((FILES / "alerts.yml").read_text())


def test_every_metric_in_the_dashboard_and_rules_is_exported() -> None:
    exprs = [*expressions(load_dashboard()), *expressions(load_rules())]
    assert len(exprs) > 20
    assert unknown_metrics(exprs) == set()


def test_a_misspelt_metric_is_caught() -> None:
    text = (FILES / "dashboard.json").read_text()
    assert "blobledger_events_accepted_total" in text
    broken = text.replace("blobledger_events_accepted_total", "blobledger_events_accept_total")
    # and a histogram's suffix on a counter
    broken = broken.replace("blobledger_dlq_records_total", "blobledger_dlq_records_bucket")
    assert unknown_metrics(expressions(load_dashboard(broken))) == {
        "blobledger_events_accept_total",
        "blobledger_dlq_records_bucket",
    }


def test_the_dashboard_shows_every_metric() -> None:
    exported = exported_series(metrics.ALL)
    shown = {exported[n] for e in expressions(load_dashboard()) for n in METRIC_NAME.findall(e)}
    assert shown == {next(iter(m.describe())).name for m in metrics.ALL}


def test_the_dashboard_has_the_three_rows_and_uses_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    assert "id" not in dashboard and dashboard["uid"]  # provisioning-ready
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Metadata path", "Blob path", "Log"]
    datasource = yaml.safe_load((FILES / "grafana" / "datasource.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_rules_have_the_required_alerts_and_define_what_they_record() -> None:
    rules = [r for group in load_rules()["groups"] for r in group["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) == {
        "BlobledgerCommandVisibleBudgetBurningFast",
        "BlobledgerCommandVisibleBudgetBurningSlowly",
        "BlobledgerConsumerLagGrowing",
        "BlobledgerDeadLettersGrowing",
        "BlobledgerPendingUploadPastDeadline",
        "BlobledgerCircuitOpen",
    }
    assert all(a["labels"]["severity"] in ("page", "ticket") for a in alerts.values())
    recorded = {r["record"] for r in rules if "record" in r}
    used = {n for r in rules for n in RECORDED_NAME.findall(r["expr"])}
    assert used == recorded


def test_the_slo_threshold_is_a_bucket_bound() -> None:
    bounds = {
        float(b)
        for e in [*expressions(load_rules()), *expressions(load_dashboard())]
        if "blobledger_command_visible_seconds_bucket" in e
        for le in re.findall(r'le=~?"([^"]+)"', e)
        for b in le.split("|")
    }
    assert bounds == {1.0}
    assert 1.0 in metrics.VISIBLE_BUCKETS


def test_prometheus_scrapes_the_aggregate_port_and_loads_the_rules() -> None:
    config = yaml.safe_load((FILES / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"host.docker.internal:{metrics.SCRAPE_PORT}"]


def test_compose_mounts_files_that_exist_where_the_configs_expect_them() -> None:
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (INFRA / source).is_file(), source
                mounts[target] = source
    assert mounts["/etc/prometheus/prometheus.yml"] == "./observability/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./observability/alerts.yml"
    providers = yaml.safe_load((FILES / "grafana" / "dashboards.yml").read_text())["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    assert any(
        t.startswith(dashboard_dir + "/") and s == "./observability/dashboard.json"
        for t, s in mounts.items()
    )
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]
    datasource = yaml.safe_load((FILES / "grafana" / "datasource.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in FILES.rglob("*") if p.is_file()),
    ids=lambda p: p.relative_to(FILES).as_posix(),
)
def test_every_file_ships_in_the_wheel(path: Path) -> None:
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"][
        "blobledger.infra"
    ]
    # setuptools globs package data relative to the package, "*" within one folder
    shipped = {match for pattern in patterns for match in INFRA.glob(pattern)}
    assert path in shipped, path.relative_to(INFRA)
