"""structlog, configured once per process.

Lines logged while a message is handled carry its ``event_id`` and ``correlation_id``
because handlers run inside :func:`bound_to`, which binds them as context variables.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from blobledger.schemas.events import Event

_configured = False


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    """Idempotent. JSON lines when not on a TTY (or BLOBLEDGER_LOG_JSON=1), else console."""
    global _configured
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
            structlog.contextvars.merge_contextvars,
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
