"""The projector, the blob worker, the breaker and the DLQ report what they do: metrics
move, spans continue the trace a record carries, and log lines name their service, event
and trace. On the in-memory twins (no services)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from blobledger.infra import cli, metrics, tracing
from blobledger.infra import logging as blog
from blobledger.infra.freeports import free_ports
from blobledger.infra.kafka import header_value
from blobledger.infra.memory import InMemoryProducer
from blobledger.infra.retry import CircuitBreaker
from blobledger.infra.testing.tracing import recorded_spans
from blobledger.schemas.errors import TransientError

from .twins import Twins, unit_settings
from .worker_support import Rig, make_rig


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    t = Twins(unit_settings(tmp_path))
    yield t
    t.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(tmp_path)


@pytest.fixture
def service() -> Iterator[str]:
    blog.set_service("worker")
    yield "worker"
    blog.set_service(None)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


# --- projector ----------------------------------------------------------------------------------
def test_a_fold_moves_the_projector_metrics_and_the_endpoint_shows_them(twins: Twins) -> None:
    s = twins.settings
    batches = value("blobledger_fold_batch_duration_seconds_count")
    accepted = value("blobledger_events_accepted_total")
    exists = value("blobledger_events_rejected_total", reason="exists")
    visible = value("blobledger_command_visible_seconds_count")
    alice = twins.client("alice")
    alice.create("docs/a", wait=False)
    alice.create("docs/a", wait=False)  # rejected: exists
    twins.fold()

    assert value("blobledger_fold_batch_duration_seconds_count") > batches
    assert value("blobledger_events_accepted_total") == accepted + 1
    assert value("blobledger_events_rejected_total", reason="exists") == exists + 1
    assert value("blobledger_command_visible_seconds_count") == visible + 2
    lag = {
        p: value(
            "blobledger_consumer_lag_records",
            group=s.projector_group,
            topic=s.events_topic,
            partition=str(p),
        )
        for p in twins.projector.positions
    }
    assert lag and set(lag.values()) == {0.0}  # folded to the end of each owned partition

    server = metrics.serve_metrics(s, service="projector", port=free_ports(1)[0])
    assert server is not None
    try:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.close()
    assert "blobledger_fold_batch_duration_seconds_bucket{le=" in text
    assert 'blobledger_processes{service="projector"} 1.0' in text


def test_lag_is_what_the_log_holds_past_the_checkpoint(twins: Twins) -> None:
    s = twins.settings
    alice = twins.client("alice")
    alice.create("docs/lag-1", wait=False)
    msgs = twins.projector.poll_batch(0.1)
    alice.create("docs/lag-2", wait=False)
    alice.create("docs/lag-3", wait=False)
    twins.projector.process(msgs)  # the two later events are in the log, not folded
    total = sum(
        value(
            "blobledger_consumer_lag_records",
            group=s.projector_group,
            topic=s.events_topic,
            partition=str(p),
        )
        for p in twins.projector.positions
    )
    assert total == 2


def test_the_fold_continues_the_trace_of_the_command_it_folds(twins: Twins) -> None:
    alice = twins.client("alice")
    with recorded_spans() as exporter:
        result = alice.create("docs/traced", wait=False)
        twins.fold()
        spans = exporter.get_finished_spans()
    (command,) = named(spans, "blobledger.command")
    (fold,) = named(spans, "blobledger.fold")
    assert command.attributes["blobledger.event_id"] == result.event_id
    assert fold.parent is not None and fold.parent.span_id == command.context.span_id
    assert fold.context.trace_id == command.context.trace_id
    assert list(fold.attributes["blobledger.event_ids"]) == [result.event_id]


def test_a_batch_of_several_traces_links_each(twins: Twins) -> None:
    alice = twins.client("alice")
    with recorded_spans() as exporter:
        alice.create("docs/one", wait=False)
        alice.create("docs/two", wait=False)
        twins.fold()
        spans = exporter.get_finished_spans()
    commands = named(spans, "blobledger.command")
    folds = named(spans, "blobledger.fold")
    linked = {link.context.span_id for f in folds for link in f.links}
    assert linked == {c.context.span_id for c in commands}
    assert all(f.parent is None for f in folds)  # a batch of many traces starts its own


def dead_letters_by_code() -> dict[str, float]:
    return {
        sample.labels["code"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "blobledger_dlq_records"
        for sample in metric.samples
        if sample.name == "blobledger_dlq_records_total"
    }


def test_an_acknowledged_dead_letter_is_counted_once(twins: Twins) -> None:
    before = dead_letters_by_code()
    producer = InMemoryProducer(twins.broker)
    producer.produce(twins.settings.events_topic, key=b"x", value=b"not avro at all")
    producer.flush()
    twins.fold()
    twins.restart_projector()
    twins.fold()  # it reads the record again (same checkpoint): the index knows its letter
    after = dead_letters_by_code()
    (letter,) = twins.messages(twins.settings.dlq_topic)
    code = header_value(letter.headers(), "dlq.error_code")
    assert code is not None
    assert {c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0)} == {code: 1}


# --- blob worker --------------------------------------------------------------------------------
def test_a_transfer_continues_the_commands_trace_and_reports_it(
    rig: Rig, tmp_path: Path, service: str
) -> None:
    data = b"quarterly numbers\n" * 1000
    path = tmp_path / "report.txt"
    path.write_bytes(data)
    stored = value("blobledger_uploads_total", outcome="stored", reason="")
    sent = value("blobledger_blob_uploaded_bytes_total")
    with recorded_spans() as exporter, capture_logs(processors=blog.CONTEXT_PROCESSORS) as logs:
        with tracing.event_span("test.client") as client:
            command = rig.request(path.as_uri())
        assert rig.run(rig.worker()) == 1
        spans = exporter.get_finished_spans()

    trace_id = client.get_span_context().trace_id
    (transfer,) = named(spans, "blobledger.transfer")
    assert transfer.parent is not None
    assert transfer.parent.span_id == client.get_span_context().span_id
    assert transfer.attributes["blobledger.upload_id"] == command.upload_id
    (put,) = named(spans, "blobledger.put_object")
    assert put.parent is not None and put.parent.span_id == transfer.context.span_id
    # the completion carries the transfer's context: its fold joins the same trace
    (record,) = rig.broker.messages(rig.settings.events_topic)
    carried = trace.get_current_span(tracing.context_from_headers(record.headers()))
    assert (carried.get_span_context().trace_id, carried.get_span_context().span_id) == (
        trace_id,
        transfer.context.span_id,
    )

    assert value("blobledger_uploads_total", outcome="stored", reason="") == stored + 1
    assert value("blobledger_blob_uploaded_bytes_total") == sent + len(data)
    assert value("blobledger_blob_transfers_in_flight") == 0

    (started,) = [line for line in logs if line["event"] == "upload.started"]
    assert started["service"] == service
    assert started["event_id"] == command.event_id
    assert started["correlation_id"] == command.envelope.correlation_id
    assert started["trace_id"] == f"{trace_id:032x}"


def test_a_compensation_is_counted_with_its_reason(rig: Rig, tmp_path: Path) -> None:
    failed = value("blobledger_uploads_total", outcome="failed", reason="source_not_found")
    rig.request((tmp_path / "missing.bin").as_uri())
    assert rig.run(rig.worker()) == 1
    assert value("blobledger_uploads_total", outcome="failed", reason="source_not_found") == (
        failed + 1
    )


# --- breaker --------------------------------------------------------------------------------
def test_the_breaker_reports_each_change_of_state() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "test-dependency", failure_threshold=2, reset_timeout=5.0, clock=lambda: now[0]
    )

    def state() -> float:
        return value("blobledger_circuit_state", dependency="test-dependency")

    opened = value("blobledger_circuit_opened_total", dependency="test-dependency")
    assert state() == 0
    for _ in range(3):
        breaker.record_failure()
    assert state() == 2
    now[0] = 6.0
    breaker.before_call()  # the trial call of the half-open breaker
    assert state() == 1
    breaker.record_failure()
    assert state() == 2
    now[0] = 12.0
    with breaker.guard():
        pass
    assert state() == 0
    assert value("blobledger_circuit_opened_total", dependency="test-dependency") == opened + 2
    with pytest.raises(TransientError), breaker.guard():
        raise TransientError("s3 away")
    assert state() == 0  # one failure is below the threshold


# --- logs -------------------------------------------------------------------------------------
def test_lines_outside_a_trace_have_no_trace_id(service: str) -> None:
    log = blog.get_logger("t")
    with recorded_spans(), capture_logs(processors=blog.CONTEXT_PROCESSORS) as logs:
        log.info("outside")
        with tracing.event_span("inside") as span:
            log.info("inside")
    outside, inside = logs
    assert outside["service"] == inside["service"] == service
    assert "trace_id" not in outside
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"


def report_log_json(argv: list[str]) -> int:
    print(os.environ.get("BLOBLEDGER_LOG_JSON", "unset"))
    return 0


def test_log_json_is_a_dispatcher_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "report", (f"{__name__}:report_log_json", "prints it"))
    monkeypatch.delenv("BLOBLEDGER_LOG_JSON", raising=False)
    assert cli.main(["report"]) == 0
    assert capsys.readouterr().out == "unset\n"
    assert cli.main(["-v", "--log-json", "report"]) == 0
    assert capsys.readouterr().out == "1\n"


LOG_A_LINE = (
    "from blobledger.infra import logging as blog; blog.configure(service='projector'); "
    "blog.get_logger('t').warning('hello', n=1)"
)


@pytest.mark.parametrize(("env", "as_json"), [({}, False), ({"BLOBLEDGER_LOG_JSON": "1"}, True)])
def test_a_terminal_gets_json_lines_only_when_asked(env: dict[str, str], as_json: bool) -> None:
    controller, terminal = os.openpty()
    try:
        base = {k: v for k, v in os.environ.items() if k != "BLOBLEDGER_LOG_JSON"}
        subprocess.run(
            [sys.executable, "-c", LOG_A_LINE],
            stderr=terminal,
            env={**base, **env},
            check=True,
            timeout=60,
        )
        written = os.read(controller, 65536).decode()
    finally:
        os.close(terminal)
        os.close(controller)
    assert "hello" in written and "projector" in written
    assert written.lstrip().startswith("{") is as_json
