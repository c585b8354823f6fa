"""The metrics: registered once with conventional names and types, bounded labels, and
observations visible on the HTTP endpoints (one process, and the multiprocess aggregate)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from blobledger.infra import metrics
from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import ConfigurationError
from blobledger.schemas.events import COMPENSATION_REASONS

EXPECTED = {
    "blobledger_fold_batch_duration_seconds": "histogram",
    "blobledger_fold_batch_events": "histogram",
    "blobledger_events_accepted": "counter",
    "blobledger_events_rejected": "counter",
    "blobledger_command_visible_seconds": "histogram",
    "blobledger_consumer_lag_records": "gauge",
    "blobledger_uploads": "counter",
    "blobledger_blob_stored_bytes": "counter",
    "blobledger_blob_uploaded_bytes": "counter",
    "blobledger_blob_part_retries": "counter",
    "blobledger_blob_transfers_in_flight": "gauge",
    "blobledger_circuit_state": "gauge",
    "blobledger_circuit_opened": "counter",
    "blobledger_pending_uploads": "gauge",
    "blobledger_oldest_pending_upload_age_seconds": "gauge",
    "blobledger_upload_deadline_seconds": "gauge",
    "blobledger_reaper_actions": "counter",
    "blobledger_dlq_records": "counter",
    "blobledger_processes": "gauge",
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def sample_line(text: str, series: str) -> float:
    """The value of ``series`` (name and labels exactly as exposed) in exposition text."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the scrape:\n{text}")


def test_every_metric_is_registered_once_with_its_type() -> None:
    families = {next(iter(m.describe())).name: next(iter(m.describe())).type for m in metrics.ALL}
    assert families == EXPECTED
    exposition = generate_latest(REGISTRY).decode()
    for name, kind in EXPECTED.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"# TYPE {exposed} {kind}" in exposition


def test_names_follow_prometheus_conventions() -> None:
    for family in (next(iter(m.describe())) for m in metrics.ALL):
        assert family.name.startswith("blobledger_")
        # counters get _total from the client; a name must not say it twice
        assert not family.name.endswith("_total")
        assert "_ms" not in family.name and "_mb" not in family.name  # base units only
    assert metrics.VISIBLE_BUCKETS[0] == 0.005 and metrics.VISIBLE_BUCKETS[-1] == 60.0


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("exists", "exists"),
        ("invalid_metadata", "invalid"),
        ("invalid_key", "invalid"),
        ("metadata_too_large", "too_large"),
        ("upload_not_pending", "upload_state"),
        ("unknown_upload", "upload_state"),
        ("checksum_mismatch", "checksum_mismatch"),
        (None, "other"),
        ("object 'x' is broken: <free text>", "other"),
    ],
)
def test_rejection_reasons_map_to_a_closed_set(reason: str | None, code: str) -> None:
    assert metrics.rejection_code(reason) == code
    assert code in metrics.REJECTION_CODES


def test_error_codes_are_blobledger_codes_or_other() -> None:
    assert metrics.error_code("codec") == "codec"
    assert metrics.error_code("unknown_schema") == "unknown_schema"  # a subclass's code
    assert metrics.error_code("retry_budget_exhausted") == "retry_budget_exhausted"
    assert metrics.error_code("KeyError") == "other"


def test_outcomes_count_each_code_once_per_batch() -> None:
    accepted = value("blobledger_events_accepted_total")
    invalid = value("blobledger_events_rejected_total", reason="invalid")
    other = value("blobledger_events_rejected_total", reason="other")
    metrics.record_outcomes(7, ["invalid_key", "invalid_metadata", "no such reason"])
    assert value("blobledger_events_accepted_total") == accepted + 7
    assert value("blobledger_events_rejected_total", reason="invalid") == invalid + 2
    assert value("blobledger_events_rejected_total", reason="other") == other + 1


def test_visible_latency_is_sampled_per_batch_and_bucketed() -> None:
    count = value("blobledger_command_visible_seconds_count")
    le_half = value("blobledger_command_visible_seconds_bucket", le="0.5")
    le_quarter = value("blobledger_command_visible_seconds_bucket", le="0.25")
    now = 1_700_000_000.0
    metrics.observe_visible([int((now - 0.3) * 1e6)] * 3, now=now)
    assert value("blobledger_command_visible_seconds_count") == count + 3
    assert value("blobledger_command_visible_seconds_bucket", le="0.5") == le_half + 3
    assert value("blobledger_command_visible_seconds_bucket", le="0.25") == le_quarter

    for n in (64, 65, 1000, 5000):
        before = value("blobledger_command_visible_seconds_count")
        metrics.observe_visible([int(now * 1e6)] * n, now=now)
        taken = value("blobledger_command_visible_seconds_count") - before
        assert 0 < taken <= metrics.VISIBLE_SAMPLES_PER_BATCH
    # a writer's clock ahead of ours counts as zero, not as a negative latency
    zero = value("blobledger_command_visible_seconds_bucket", le="0.005")
    metrics.observe_visible([int((now + 5) * 1e6)], now=now)
    assert value("blobledger_command_visible_seconds_bucket", le="0.005") == zero + 1


def test_uploads_are_labelled_by_outcome_and_closed_reason() -> None:
    stored_bytes = value("blobledger_blob_stored_bytes_total")
    failed = value("blobledger_uploads_total", outcome="failed", reason="other")
    metrics.record_upload("stored", size=1000)
    metrics.record_upload("failed", reason="it broke somehow")
    assert value("blobledger_blob_stored_bytes_total") == stored_bytes + 1000
    assert value("blobledger_uploads_total", outcome="failed", reason="other") == failed + 1
    assert "timeout" in COMPENSATION_REASONS
    with pytest.raises(ValueError, match="unknown upload outcome"):
        metrics.record_upload("exploded")


def test_a_circuit_opening_counts_once_however_often_it_is_reported() -> None:
    opened = value("blobledger_circuit_opened_total", dependency="test-dep")
    for state in ("closed", "open", "open", "half_open", "open", "closed"):
        metrics.record_circuit_state("test-dep", state)
    assert value("blobledger_circuit_opened_total", dependency="test-dep") == opened + 2
    assert value("blobledger_circuit_state", dependency="test-dep") == 0
    metrics.record_circuit_state("test-dep", "open")
    assert value("blobledger_circuit_state", dependency="test-dep") == 2
    with pytest.raises(ValueError):
        metrics.record_circuit_state("test-dep", "ajar")


def test_no_port_serves_nothing() -> None:
    assert metrics.serve_metrics(Settings(), service="test") is None


def test_an_observation_shows_on_the_endpoint() -> None:
    port = free_ports(1)[0]
    server = metrics.serve_metrics(Settings(metrics_port=port - 3), service="test", offset=3)
    assert server is not None and server.port == port
    try:
        metrics.record_dead_letter("unknown_schema")
        metrics.record_reaper_actions(compensated=2, deleted_spool=1)
        metrics.set_consumer_lag("g", "t.events", 4, 17)
        text = scrape(server.url)
    finally:
        server.close()
    assert sample_line(text, 'blobledger_dlq_records_total{code="unknown_schema"}') == value(
        "blobledger_dlq_records_total", code="unknown_schema"
    )
    assert sample_line(text, 'blobledger_reaper_actions_total{action="compensated"}') >= 2
    assert (
        sample_line(
            text, 'blobledger_consumer_lag_records{group="g",partition="4",topic="t.events"}'
        )
        == 17
    )
    assert sample_line(text, 'blobledger_processes{service="test"}') == 1


def test_a_taken_port_is_a_configuration_error() -> None:
    port = free_ports(1)[0]
    server = metrics.serve_metrics(Settings(), service="test", port=port)
    assert server is not None
    try:
        with pytest.raises(ConfigurationError, match="BLOBLEDGER_METRICS_PORT"):
            metrics.serve_metrics(Settings(), service="test", port=port)
    finally:
        server.close()


CHILD = textwrap.dedent(
    """
    import os

    from blobledger.infra import metrics
    from blobledger.infra.settings import Settings

    # in multiprocess mode a child serves nothing itself, whatever its port
    assert metrics.serve_metrics(Settings(metrics_port=1), service="worker") is None
    metrics.record_upload("stored", size=100)
    metrics.record_circuit_state("s3", "open")
    print(os.getpid())
    """
)


def test_processes_aggregate_into_one_endpoint(tmp_path: Path) -> None:
    directory = metrics.prepare_multiprocess_dir(tmp_path / "metrics")
    env = {**os.environ, **metrics.multiprocess_env(directory)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", CHILD], env=env, check=True, timeout=60, capture_output=True
            ).stdout
        )
        for _ in range(2)
    ]
    port = free_ports(1)[0]
    server = metrics.serve_aggregate(Settings(metrics_port=port), directory)
    assert server is not None
    try:
        text = scrape(server.url)
        assert sample_line(text, 'blobledger_uploads_total{outcome="stored",reason=""}') == 2
        assert sample_line(text, "blobledger_blob_stored_bytes_total") == 200
        assert sample_line(text, 'blobledger_circuit_state{dependency="s3"}') == 2
        assert sample_line(text, 'blobledger_processes{service="worker"}') == 2
        # ended children's live gauges drop out; their counts stay
        for pid in pids:
            metrics.process_exited(pid, directory)
        text = scrape(server.url)
    finally:
        server.close()
    assert 'blobledger_processes{service="worker"}' not in text
    assert 'blobledger_circuit_state{dependency="s3"}' not in text
    assert sample_line(text, 'blobledger_uploads_total{outcome="stored",reason=""}') == 2
    # a fresh run starts from nothing
    metrics.prepare_multiprocess_dir(directory)
    assert list(directory.iterdir()) == []
    assert metrics.serve_aggregate(Settings(), directory) is None
