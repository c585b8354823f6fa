"""Traces (OpenTelemetry): one trace from a client's command through the log, the fold,
the blob worker's transfer and the completion's fold.

Processes call :func:`setup_tracing` once. With no OTLP endpoint configured it installs
nothing, and every span below is the API's no-op span: a function call, no allocation of
a recording span, no export. Even then a no-op span carries its parent's context, so a
process without tracing still passes a ``traceparent`` it received on to what it emits.

The trace context crosses Kafka as the W3C ``traceparent`` (and ``tracestate``) record
header, the header ``infra.kafka.headers_for`` writes: producers put it there with
:func:`current_traceparent` (passed as ``publish_async(..., traceparent=...)``) or
:func:`inject_headers`; consumers continue it with :func:`context_from_headers` or
:func:`consumer_span`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from blobledger.infra.kafka import HeaderList, Headers, LogPosition, header_list
from blobledger.infra.settings import Settings
from blobledger.schemas.events import Event

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

#: the instrumentation scope every blobledger span is recorded under
TRACER_NAME = "blobledger"
#: the record headers of the W3C trace context
TRACE_HEADERS = ("traceparent", "tracestate")
#: the most links a batch span keeps (the SDK's default limit)
MAX_LINKS = 128

# the wire format is fixed (W3C), whatever OTEL_PROPAGATORS says for HTTP
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_installed: TracerProvider | None = None


def traces_endpoint(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL: ``otlp_endpoint`` + ``/v1/traces``, else the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as is) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+
    ``/v1/traces``); None when none is set or ``OTEL_SDK_DISABLED`` is true."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.otlp_endpoint:
        return settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    if full := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return full
    if base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return base.rstrip("/") + "/v1/traces"
    return None


def build_provider(
    settings: Settings, service_name: str, env: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """A TracerProvider exporting in batches to the OTLP endpoint (None: no endpoint).
    Sampling follows ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on)."""
    endpoint = traces_endpoint(settings, env)
    if endpoint is None:
        return None
    # imported only here: a process that does not trace never loads the SDK
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def setup_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    """Install the exporting provider process-wide, once (later calls return the first
    one); None, and nothing installed, when no endpoint is configured. The SDK flushes
    pending spans at exit."""
    global _installed
    with _lock:
        if _installed is None:
            provider = build_provider(settings, service_name)
            if provider is not None:
                trace.set_tracer_provider(provider)
                _installed = provider
        return _installed


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


# --- propagation over Kafka headers --------------------------------------------------------
def _carrier(headers: Headers | None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in header_list(headers):
        if key in TRACE_HEADERS and value is not None and key not in carrier:
            carrier[key] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return carrier


def current_traceparent(context: Context | None = None) -> str | None:
    """The ``traceparent`` of the current (or given) span; None outside any trace."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context)
    return carrier.get("traceparent")


def inject_headers(headers: HeaderList, context: Context | None = None) -> HeaderList:
    """``headers`` with the current (or given) trace context as its ``traceparent`` /
    ``tracestate`` (replacing any); unchanged outside any trace."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context)
    if not carrier:
        return headers
    kept = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def context_from_headers(msg_headers: Headers | None) -> Context:
    """The trace context a consumed record carries (an empty context when none: spans
    started in it begin a new trace)."""
    return _propagator.extract(_carrier(msg_headers))


def has_trace(msg_headers: Headers | None) -> bool:
    """Whether a record carries a valid trace context (cheap: no span is made)."""
    ctx = trace.get_current_span(context_from_headers(msg_headers)).get_span_context()
    return ctx.is_valid


def links_from(headers_seq: Iterable[Headers | None]) -> list[Link]:
    """Links to the traces of a batch's records (those that carry one), at most
    :data:`MAX_LINKS`: a batch span belongs to many traces at once."""
    links: list[Link] = []
    for headers in headers_seq:
        if len(links) >= MAX_LINKS:
            break
        carrier = _carrier(headers)
        if not carrier:  # most records of an untraced batch: skip the parse (a third the cost)
            continue
        ctx = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
        if ctx.is_valid:
            links.append(Link(ctx))
    return links


# --- spans ----------------------------------------------------------------------------------
def event_attributes(event: Event) -> dict[str, AttributeValue]:
    """Span attributes that find an event's spans by its ids."""
    env = event.envelope
    attributes: dict[str, AttributeValue] = {
        "blobledger.event_type": event.event_type,
        "blobledger.event_id": env.event_id,
        "blobledger.correlation_id": env.correlation_id,
        "blobledger.object_id": env.object_id,
    }
    upload_id = getattr(event, "upload_id", None)
    if isinstance(upload_id, str):
        attributes["blobledger.upload_id"] = upload_id
    return attributes


def message_attributes(position: LogPosition) -> dict[str, AttributeValue]:
    """OpenTelemetry's messaging attributes of a Kafka record."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": position.topic,
        "messaging.destination.partition.id": str(position.partition),
        "messaging.kafka.offset": position.offset,
    }


@contextmanager
def event_span(
    name: str,
    event: Event | None = None,
    *,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Iterable[Link] = (),
) -> Iterator[Span]:
    """A current span named ``name`` with ``event``'s ids as attributes, a child of
    ``context`` (e.g. :func:`context_from_headers`) or else of the current span."""
    attrs = dict(event_attributes(event)) if event is not None else {}
    if attributes:
        attrs.update(attributes)
    with tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=attrs, links=list(links)
    ) as span:
        yield span


@contextmanager
def consumer_span(
    name: str,
    msg_headers: Headers | None,
    event: Event | None = None,
    *,
    position: LogPosition | None = None,
) -> Iterator[Span]:
    """A consumer's span for one record, continuing the trace the record carries."""
    attributes = message_attributes(position) if position is not None else None
    with event_span(
        name,
        event,
        context=context_from_headers(msg_headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span
