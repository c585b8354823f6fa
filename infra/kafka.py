"""Kafka client factories (confluent-kafka / librdkafka) and header helpers.

Every non-default option carries a comment saying why. The same factories serve the
embedded Tansu broker and Apache Kafka; ``settings.kafka_config`` (security, SASL, ...)
is merged last so an operator can override anything.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from blobledger.infra.settings import Settings
from blobledger.schemas.errors import PermanentError, StackError, TimeoutExpired, TransientError
from blobledger.schemas.events import Event


def _base(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        # Tansu answers fine on IPv4 loopback; avoid a v6 attempt on "localhost"
        "broker.address.family": "v4",
    }


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> Producer:
    config: dict[str, Any] = {
        **_base(settings),
        # no duplicates or reordering on retry: the log is our source of truth
        "enable.idempotence": True,
        "acks": "all",
        # small batches ride together; 5 ms is invisible next to the broker's ack time
        "linger.ms": 5,
        "compression.type": "lz4",
        # fail a send instead of buffering forever when the broker is gone
        "message.timeout.ms": 60000,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.update(settings.kafka_config)
    config.update(overrides)
    return Producer(config)


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    config: dict[str, Any] = {
        **_base(settings),
        "group.id": group_id,
        # offsets are committed by us after the work is durable (or kept in Postgres)
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # a new group reads the whole log: the read model is a fold from offset 0
        "auto.offset.reset": "earliest",
        # Tansu's first group join waits for the session timeout; 6 s keeps it short
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.consumer_session_timeout_ms // 3),
        # never see records of aborted transactions (Tansu 0.6 ignores this; the fold
        # is idempotent so correctness does not depend on it)
        "isolation.level": "read_committed",
        # Tansu holds a fetch for the whole wait even when records arrive; a short wait
        # keeps produce-to-fold latency near the broker's own (~20 ms instead of ~250 ms)
        "fetch.wait.max.ms": 20,
        # bigger fetches amortise per-request cost during replays
        "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 10485760,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(settings.kafka_config)
    config.update(overrides)
    return Consumer(config)


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    config = {**_base(settings), **settings.kafka_config, **overrides}
    return AdminClient(config)


def headers_for(event: Event, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """Headers that let tools route and trace a message without decoding its body."""
    env = event.envelope
    headers = [
        ("event_type", event.event_type.encode()),
        ("event_id", env.event_id.encode()),
        ("correlation_id", env.correlation_id.encode()),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


def header_value(headers: list[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


def translate(error: KafkaError | KafkaException | Exception) -> TransientError | PermanentError:
    """Map a librdkafka error to the project's transient/permanent split."""
    err = error.args[0] if isinstance(error, KafkaException) and error.args else error
    if isinstance(err, KafkaError):
        if err.retriable() or err.code() in (
            KafkaError._TRANSPORT,
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._TIMED_OUT,
            KafkaError._MSG_TIMED_OUT,
            KafkaError.REQUEST_TIMED_OUT,
            KafkaError.NOT_LEADER_FOR_PARTITION,
            KafkaError.LEADER_NOT_AVAILABLE,
        ):
            return TransientError(f"kafka: {err.str()} (is the broker up? retrying may help)")
        return PermanentError(f"kafka: {err.str()}")
    return TransientError(f"kafka: {error}")


def end_offsets(settings: Settings, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """The true end (next offset) of every partition of ``topic``.

    ListOffsets on Tansu 0.6 answers the base offset of the last record batch + 1, not
    the end of the log, so a batch of 3 records reads as 1. Fetch responses carry the
    right high watermark, so we read from just below the reported end until the
    partition-EOF event, which states the real end. On Apache Kafka this costs one fetch
    of one record per partition."""
    consumer = make_consumer(
        settings,
        f"{settings.projector_group}.end-probe",
        **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},
    )
    try:
        md = consumer.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            raise StackError(
                f"topic {topic} not found; is this the right broker and prefix?", service="kafka"
            )
        ends: dict[int, int] = {}
        probe: list[TopicPartition] = []
        for p in sorted(t.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
            if high > low:
                probe.append(TopicPartition(topic, p, max(high - 1, low)))
        if probe:
            consumer.assign(probe)
            waiting = {tp.partition for tp in probe}
            deadline = time.monotonic() + timeout
            while waiting:
                if time.monotonic() > deadline:
                    raise TimeoutExpired(
                        f"could not read the end of {topic} partitions {sorted(waiting)}"
                    )
                for m in consumer.consume(10000, 0.5):
                    err = m.error()
                    if err is None:
                        ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        ends[m.partition()] = max(ends[m.partition()], m.offset())
                        waiting.discard(m.partition())
                    else:
                        raise translate(err)
        return ends
    finally:
        consumer.close()
