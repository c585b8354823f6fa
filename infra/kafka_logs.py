"""librdkafka's own log lines, through structlog and rate-limited.

Left alone, librdkafka writes to stderr itself: one line per failed connect attempt,
hundreds while a broker is down, in a format nothing else uses, past every log level
and ``--json`` promise the CLI makes. Every client gets :func:`librdkafka_logger` (the
``logger`` config key); its handler forwards each line to structlog, so it is filtered
and rendered like any other, and lets the same line through at most once per window,
counting the repeats it held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

#: the same line is shown at most once in this many seconds
WINDOW_SECONDS = 10.0
#: distinct lines remembered; older ones are forgotten first once past the window
MAX_REMEMBERED = 1024

# parts of a line that change while it says the same thing: "(after 12ms in state
# CONNECT, 30 identical error(s) suppressed)"
_VOLATILE = re.compile(r"\b\d+(?=ms\b| identical error)")
# librdkafka's thread tag, "[thrd:127.0.0.1:9092/bootstrap]: ", kept as a field
_THREAD = re.compile(r"^\[thrd:([^\]]*)\]:\s*")
_LOGGER_NAME = "blobledger.librdkafka"
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_setup = threading.Lock()


@dataclass
class _Seen:
    shown_at: float
    suppressed: int = 0


class RateLimitedForwarder(logging.Handler):
    """A ``logging`` handler for confluent-kafka's log callback: it calls
    ``logger.log(level, "%s [%s] %s", facility, client_name, text)``."""

    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        super().__init__(logging.DEBUG)
        self.window = window
        self._clock = clock
        self._max = max_remembered
        self._seen: dict[tuple[int, str, str], _Seen] = {}

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        facility, client, text = _parts(record)
        thread = None
        if m := _THREAD.match(text):
            thread, text = m.group(1), text[m.end() :]
        key = (record.levelno, facility, _VOLATILE.sub("N", text))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.shown_at < self.window:
            seen.suppressed += 1
            return
        repeats = seen.suppressed if seen is not None else 0
        self._seen.pop(key, None)  # re-inserted last: the dict stays ordered by shown_at
        self._seen[key] = _Seen(now)
        self._forget(now)
        fields: dict[str, object] = {"source": "librdkafka", "facility": facility}
        if client:
            fields["client"] = client
        if thread:
            fields["thread"] = thread
        if repeats:
            fields["repeats_suppressed"] = repeats
        # a fresh proxy per line: structlog's configuration (or a test's capture) applies
        level = max((n for n in _LEVELS if n <= record.levelno), default=logging.DEBUG)
        structlog.get_logger(_LOGGER_NAME).log(level, text, **fields)

    def _forget(self, now: float) -> None:
        """Drop the oldest lines once too many are remembered, never one still inside its
        window (it would be shown again too early)."""
        while len(self._seen) > self._max:
            oldest_key, oldest = next(iter(self._seen.items()))
            if now - oldest.shown_at < self.window:
                return
            del self._seen[oldest_key]


def _parts(record: logging.LogRecord) -> tuple[str, str, str]:
    """(facility, client name, text) of a confluent-kafka log record; any other record
    (a caller logging on this logger itself) is kept whole as the text."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s":
        facility, client, text = args
        return str(facility), str(client), str(text)
    return "", "", record.getMessage()


def librdkafka_logger() -> logging.Logger:
    """The logger every confluent-kafka client is given. Idempotent; it does not
    propagate to the root logger, so nothing else prints the lines a second time."""
    logger = logging.getLogger(_LOGGER_NAME)
    with _setup:  # clients are made on several threads; one handler, or lines twice
        if not any(isinstance(h, RateLimitedForwarder) for h in logger.handlers):
            logger.addHandler(RateLimitedForwarder())
            logger.setLevel(logging.DEBUG)  # structlog's configured level decides
            logger.propagate = False
    return logger
