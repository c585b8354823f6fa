"""librdkafka's log lines reach structlog, the same line at most once per window."""

from __future__ import annotations

import logging

from confluent_kafka import Producer
from structlog.testing import capture_logs

from blobledger.infra.kafka_logs import RateLimitedForwarder, librdkafka_logger

REFUSED = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
    "failed: Connection refused (after {ms}ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(text: str, level: int = logging.ERROR, facility: str = "FAIL") -> logging.LogRecord:
    """A record as confluent-kafka's log callback makes it."""
    return logging.LogRecord(
        "rk", level, __file__, 0, "%s [%s] %s", (facility, "rdkafka#producer-1", text), None
    )


def test_the_same_line_is_shown_once_per_window_with_a_count() -> None:
    clock = Clock()
    handler = RateLimitedForwarder(window=10.0, clock=clock)
    with capture_logs() as logs:
        for i in range(50):  # only the delay differs: the same line
            handler.handle(record(REFUSED.format(ms=i)))
            clock.now += 0.1  # 5 s in all
        handler.handle(record("other: Disconnected", facility="FAIL"))
        clock.now += 5.1  # the first line's window is over
        handler.handle(record(REFUSED.format(ms=3)))
        handler.handle(record(REFUSED.format(ms=4)))
    assert [(e["log_level"], e["event"], e.get("repeats_suppressed")) for e in logs] == [
        ("error", REFUSED.format(ms=0).split("]: ", 1)[1], None),
        ("error", "other: Disconnected", None),
        ("error", REFUSED.format(ms=3).split("]: ", 1)[1], 49),
    ]
    first = logs[0]
    assert (first["source"], first["facility"], first["client"], first["thread"]) == (
        "librdkafka",
        "FAIL",
        "rdkafka#producer-1",
        "127.0.0.1:1/bootstrap",
    )


def test_levels_are_kept_and_distinct_levels_are_distinct_lines() -> None:
    handler = RateLimitedForwarder(clock=Clock())
    with capture_logs() as logs:
        handler.handle(record("x", logging.WARNING))
        handler.handle(record("x", logging.ERROR))
        handler.handle(record("x", logging.INFO))
        handler.handle(record("x", logging.INFO))
    assert [e["log_level"] for e in logs] == ["warning", "error", "info"]


def test_memory_forgets_old_lines_but_none_inside_their_window() -> None:
    clock = Clock()
    handler = RateLimitedForwarder(window=10.0, clock=clock, max_remembered=3)
    with capture_logs() as logs:
        for i in range(5):
            handler.handle(record(f"line {i}"))
        handler.handle(record("line 0"))  # still inside its window: held back
        clock.now += 11
        for i in range(5, 10):
            handler.handle(record(f"line {i}"))
    assert len(logs) == 10
    # past the bound, lines whose window is over are forgotten; those inside it are kept
    assert sorted(text for _, _, text in handler._seen) == [f"line {i}" for i in range(5, 10)]


def test_every_client_config_carries_the_logger_and_lines_arrive() -> None:
    logger = librdkafka_logger()
    assert librdkafka_logger() is logger
    # exactly one forwarder however often it is asked for (other handlers, such as pytest's
    # capture, may come and go)
    assert sum(isinstance(h, RateLimitedForwarder) for h in logger.handlers) == 1
    assert not logger.propagate
    with capture_logs() as logs:
        p = Producer(
            {"bootstrap.servers": "127.0.0.1:1", "logger": logger, "message.timeout.ms": 1000}
        )
        p.produce("t", b"x")
        p.flush(3)
    refused = [e for e in logs if e.get("source") == "librdkafka"]
    assert refused and "Connection refused" in refused[0]["event"]
    assert len(refused) <= 2, refused  # one line, not one per connect attempt
