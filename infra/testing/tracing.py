"""Spans recorded in memory, for tests that follow one trace across the processes'
code run in one test process (client -> projector fold -> worker transfer -> fold).

OpenTelemetry lets a process set its tracer provider once, so the first use installs an
SDK provider for the rest of the process, exporting each span synchronously as it ends to
one in-memory exporter; :func:`recorded_spans` clears that exporter as a block starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_lock = threading.Lock()
_exporter: InMemorySpanExporter | None = None


def memory_exporter() -> InMemorySpanExporter:
    """The process's in-memory exporter, installing the SDK on first use. A provider
    installed earlier by someone else gets the exporter added, if it is the SDK's."""
    global _exporter
    with _lock:
        if _exporter is None:
            exporter = InMemorySpanExporter()
            processor = SimpleSpanProcessor(exporter)
            trace.set_tracer_provider(
                TracerProvider(resource=Resource.create({"service.name": "blobledger-tests"}))
            )
            provider = trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                raise RuntimeError(
                    f"a non-SDK tracer provider ({type(provider).__name__}) is installed; "
                    "spans cannot be recorded"
                )
            provider.add_span_processor(processor)
            _exporter = exporter
        return _exporter


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """``with recorded_spans() as spans: ...``, then ``spans.get_finished_spans()``: the
    spans ended since the block started, in any thread."""
    exporter = memory_exporter()
    exporter.clear()
    yield exporter
