"""Traces: nothing installed without an endpoint, and one trace continues across
processes through the Kafka record headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from blobledger.infra import tracing
from blobledger.infra.kafka import headers_for
from blobledger.infra.settings import Settings
from blobledger.infra.testing.tracing import recorded_spans
from blobledger.schemas.events import BlobStored, Envelope, new_id

OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "BLOBLEDGER_OTLP_ENDPOINT",
)


def stored() -> BlobStored:
    env = Envelope(object_id=new_id(), actor="system:blob-worker")
    return BlobStored(env, upload_id=new_id(), sha256="ab" * 32, size=5)


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_otel_env")
def test_without_an_endpoint_setup_installs_nothing() -> None:
    before = trace.get_tracer_provider()
    assert tracing.setup_tracing(Settings(), "blobledger-test") is None
    assert trace.get_tracer_provider() is before


def test_endpoint_precedence() -> None:
    ours = Settings(otlp_endpoint="http://collector:4318/")
    assert tracing.traces_endpoint(Settings(), {}) is None
    assert tracing.traces_endpoint(ours, {}) == "http://collector:4318/v1/traces"
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    assert tracing.traces_endpoint(Settings(), base) == "http://env:4318/v1/traces"
    full = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/custom"}
    assert tracing.traces_endpoint(Settings(), full) == "http://env:4318/custom"
    assert tracing.traces_endpoint(ours, full) == "http://collector:4318/v1/traces"
    assert tracing.traces_endpoint(ours, {"OTEL_SDK_DISABLED": "true"}) is None


def test_an_endpoint_builds_an_exporting_provider_named_after_the_service() -> None:
    settings = Settings(otlp_endpoint="http://127.0.0.1:9")
    provider = tracing.build_provider(settings, "blobledger-projector", env={})
    assert isinstance(provider, TracerProvider)
    try:
        assert provider.resource.attributes["service.name"] == "blobledger-projector"
        assert trace.get_tracer_provider() is not provider  # built, not installed
    finally:
        provider.shutdown()


def test_outside_any_trace_no_header_is_written() -> None:
    headers: list[tuple[str, str | bytes | None]] = [("event_id", b"e")]
    assert tracing.current_traceparent() is None
    assert tracing.inject_headers(headers) == [("event_id", b"e")]
    assert not tracing.has_trace(headers)


def test_a_span_continues_from_record_headers_with_the_same_trace() -> None:
    event = stored()
    with recorded_spans() as spans:
        with tracing.event_span("client.put", event) as client:
            # the header the publisher writes today, fed from the current span
            headers = headers_for(event, tracing.current_traceparent())
            again = tracing.inject_headers([("traceparent", b"00-stale-00"), ("k", b"v")])
        assert [k for k, _ in again] == ["k", "traceparent"]
        assert tracing.has_trace(headers)
        # "another process": nothing of the client's context is current here
        assert not trace.get_current_span().get_span_context().is_valid
        with tracing.consumer_span("projector.fold", headers, event):
            pass
        finished = {s.name: s for s in spans.get_finished_spans()}
    fold = finished["projector.fold"]
    assert fold.context.trace_id == client.get_span_context().trace_id
    assert fold.parent is not None
    assert fold.parent.span_id == client.get_span_context().span_id
    assert fold.kind is trace.SpanKind.CONSUMER
    assert fold.attributes is not None
    assert fold.attributes["blobledger.upload_id"] == event.upload_id
    assert fold.attributes["blobledger.correlation_id"] == event.envelope.correlation_id
    assert fold.attributes["blobledger.object_id"] == event.object_id


def test_a_batch_span_links_the_traces_of_its_records() -> None:
    with recorded_spans() as spans:
        with tracing.event_span("a") as a:
            traced = tracing.inject_headers([])
        links = tracing.links_from([traced, [("event_id", b"x")], None])
        with tracing.event_span("fold.batch", links=links):
            pass
        batch = next(s for s in spans.get_finished_spans() if s.name == "fold.batch")
    assert [link.context.trace_id for link in batch.links] == [a.get_span_context().trace_id]


# a child process continues the trace whose headers it is given (as JSON); with
# "sdk" it records its span, without it only passes the context on
CHILD = textwrap.dedent(
    """
    import json, sys
    from blobledger.infra import tracing

    mode, headers = sys.argv[1], [(k, v.encode()) for k, v in json.loads(sys.argv[2])]
    if mode == "sdk":
        from blobledger.infra.testing.tracing import recorded_spans
        with recorded_spans() as spans:
            with tracing.consumer_span("worker.transfer", headers):
                with tracing.event_span("worker.part"):
                    pass
            out = [
                [s.name, s.context.trace_id, s.parent.span_id if s.parent else None]
                for s in spans.get_finished_spans()
            ]
    else:
        with tracing.consumer_span("worker.transfer", headers):
            out = tracing.current_traceparent()
    print(json.dumps(out))
    """
)


def run_child(mode: str, headers: list[tuple[str, str | bytes | None]]) -> object:
    pairs = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in headers]
    env = {k: v for k, v in os.environ.items() if k not in OTEL_VARS}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, json.dumps(pairs)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads(done.stdout)


def test_one_trace_id_across_processes() -> None:
    with recorded_spans(), tracing.event_span("client.put") as client:
        headers = tracing.inject_headers([])
    ctx = client.get_span_context()
    recorded = run_child("sdk", headers)
    assert isinstance(recorded, list)
    names = {name: (trace_id, parent) for name, trace_id, parent in recorded}
    assert names["worker.transfer"] == (ctx.trace_id, ctx.span_id)
    assert names["worker.part"][0] == ctx.trace_id
    # a process that does not trace forwards the context it received
    forwarded = run_child("noop", headers)
    assert forwarded == tracing.current_traceparent(tracing.context_from_headers(headers))
    assert isinstance(forwarded, str) and f"{ctx.trace_id:032x}" in forwarded
