"""The benchmark output contract: row fields, ratio, target evaluation, table, registry."""

import json

from blobledger.benchmarks import cli
from blobledger.benchmarks.common import (
    FIELDS,
    format_table,
    not_available,
    percentile,
    result,
    target_met,
)


def test_rate_row_has_contract_fields_and_ratio_ours_over_baseline():
    row = result(
        "P1", "apply", 30000.0, 50000.0, "floor", "events/s", ">= 0.5", extra={"events": 10}
    )
    assert list(row)[: len(FIELDS)] == list(FIELDS)
    assert row["ratio"] == 0.6 and row["met"] is True and row["events"] == 10
    json.dumps(row)  # serialisable as one line


def test_latency_row_takes_its_own_ratio_and_target_direction():
    row = result("P5", "p99", 120.0, 100.0, "raw", "ms", "<= 1.5", ratio=1.2)
    assert row["ratio"] == 1.2 and row["met"] is True
    assert result("P5", "p99", 200.0, 100.0, "raw", "ms", "<= 1.5", ratio=2.0)["met"] is False


def test_target_parsing_and_missing_values():
    assert target_met(1.0, ">= 1.0") and not target_met(0.99, ">= 1.0")
    assert target_met(0.01, "< 0.02") and target_met(None, ">= 1") is None
    assert result("P2", "x", None, None, "", "events/s", ">= 1.0")["met"] is None


def test_percentile_nearest_rank():
    assert percentile(list(range(1, 101)), 99) == 99 and percentile([5.0], 50) == 5.0


def test_table_and_not_available_rows():
    rows = [
        result("P1", "apply", 25000.0, 40000.0, "floor", "events/s", ">= 0.5"),
        not_available("P3", "x:y"),
    ]
    text = format_table(rows)
    assert "P1" in text and "0.625" in text and "P3" in text and "not available" in text


def test_registry_is_one_line_per_benchmark_and_missing_modules_resolve_to_none():
    assert set(cli.REGISTRY) == {"P1", "P2", "P3", "P4", "P5", "P6"}
    assert cli.resolve("blobledger.benchmarks.no_such_module:run") is None
    assert callable(cli.resolve("blobledger.benchmarks.p1_projector:run"))


def test_unavailable_benchmark_prints_a_line_not_a_crash(monkeypatch, capsys):
    monkeypatch.setitem(cli.REGISTRY, "P3", "blobledger.benchmarks.no_such_module:run")
    assert cli.main(["P3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["id"] == "P3" and row["available"] is False and row["met"] is None
