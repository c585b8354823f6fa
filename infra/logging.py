"""structlog, configured once per process.

Every line of a long-running process says which ``service`` wrote it (:func:`set_service`,
or ``configure(service=...)``) and, inside a span, its ``trace_id``, so a log line leads
to its trace and back. Lines logged while a message is handled carry its ``event_id`` and
``correlation_id`` because handlers run inside :func:`bound_to`, which binds them as
context variables.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from blobledger.schemas.events import Event

_configured = False
_service: str | None = None


def set_service(name: str | None) -> None:
    """Name the process's service on every line from now on (``projector``, ``worker``...;
    None: no service field)."""
    global _service
    _service = name


def add_service(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    if _service is not None:
        event_dict.setdefault("service", _service)
    return event_dict


def add_trace_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The current span's trace id (hex, as trace UIs show it); nothing outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
    return event_dict


#: what every line gets before it is rendered: bound ids, service, trace id (tests capture
#: lines through these too: ``capture_logs(processors=CONTEXT_PROCESSORS)``)
CONTEXT_PROCESSORS: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    add_service,
    add_trace_id,
)


def configure(
    level: str | None = None, *, json: bool | None = None, service: str | None = None
) -> None:
    """Idempotent. JSON lines when not on a TTY (or BLOBLEDGER_LOG_JSON=1), else console.
    ``service`` is set even when logging was configured already (by the CLI dispatcher)."""
    global _configured
    if service is not None:
        set_service(service)
    if _configured:
        return
    level_name = (level or os.environ.get("BLOBLEDGER_LOG_LEVEL", "INFO")).upper()
    as_json = (
        json
        if json is not None
        else (os.environ.get("BLOBLEDGER_LOG_JSON") == "1" or not sys.stderr.isatty())
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *CONTEXT_PROCESSORS,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


@contextmanager
def bound_to(event: Event, **extra: object) -> Iterator[None]:
    """Bind the event's ids to every log line emitted inside the block."""
    env = event.envelope
    with structlog.contextvars.bound_contextvars(
        event_id=env.event_id,
        correlation_id=env.correlation_id,
        object_id=env.object_id,
        event_type=event.event_type,
        **extra,
    ):
        yield


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
