"""Kafka client factories (confluent-kafka / librdkafka) and header helpers.

Every non-default option carries a comment saying why. The same factories serve the
embedded Tansu broker and Apache Kafka; ``settings.kafka_config`` (security, SASL, ...)
is merged last so an operator can override anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from blobledger.infra.kafka_logs import librdkafka_logger
from blobledger.infra.settings import Settings
from blobledger.schemas.auth import AUTH_HEADER, Key, authenticator
from blobledger.schemas.errors import PermanentError, StackError, TimeoutExpired, TransientError
from blobledger.schemas.events import Event

if TYPE_CHECKING:
    from blobledger.infra.limits import FetchLimit


def _base(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        # Tansu answers fine on IPv4 loopback; avoid a v6 attempt on "localhost"
        "broker.address.family": "v4",
        # librdkafka's own lines go through structlog, each at most once per 10 s,
        # instead of straight to stderr (hundreds while a broker is down)
        "logger": librdkafka_logger(),
    }


def make_producer(
    settings: Settings,
    *,
    transactional_id: str | None = None,
    max_record_bytes: int | None = None,
    **overrides: Any,
) -> Producer:
    """``max_record_bytes``: the destination topic's limit (infra/limits.py)."""
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
        # a topic gets the configured partitions (infra/topics.py), never the broker's default
        "allow.auto.create.topics": False,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
    if max_record_bytes is not None:
        # as large as the topic takes: produce() refuses a bigger record at once with
        # MSG_SIZE_TOO_LARGE, as the broker would after a round trip
        config["message.max.bytes"] = min(max(max_record_bytes, 1000), MESSAGE_MAX_BYTES)
    config.update(settings.kafka_config)
    config.update(overrides)
    return Producer(config)


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """Callers that know what the topics hold pass ``**fetch_sizes(...)`` (infra/limits.py),
    so every record comes through whole."""
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
        "fetch.max.bytes": FETCH_MAX_BYTES,
        "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(settings.kafka_config)
    config.update(overrides)
    return Consumer(config)


#: make_consumer's fetch sizes (bigger fetches amortise per-request cost during replays)
FETCH_MAX_BYTES = 52428800
PARTITION_FETCH_BYTES = 10485760
#: librdkafka's upper bounds of message.max.bytes, max.partition.fetch.bytes and
#: receive.message.max.bytes (which must exceed fetch.max.bytes by 512)
MESSAGE_MAX_BYTES = 1_000_000_000
RECEIVE_MAX_BYTES = 2_147_483_647
#: librdkafka's default receive.message.max.bytes, never lowered
RECEIVE_DEFAULT_BYTES = 100_000_000


def fetch_sizes(fetch: FetchLimit) -> dict[str, Any]:
    """make_consumer overrides that let a record of ``fetch.record_bytes`` through whole.

    The per-fetch sizes are soft (a fetch returns its first record batch whole even when
    it is bigger), so they grow only to hold one record; ``receive.message.max.bytes`` is
    hard (a bigger response is dropped and fetched again, forever). When some limit was
    assumed, the broker may hold records of any size (Tansu 0.6 does), so that cap goes to
    its maximum: it bounds what a response may claim, not what is allocated up front."""
    record = fetch.record_bytes
    fetch_max = min(max(FETCH_MAX_BYTES, record + 1024), RECEIVE_MAX_BYTES - 512)
    return {
        "max.partition.fetch.bytes": min(max(PARTITION_FETCH_BYTES, record), MESSAGE_MAX_BYTES),
        "fetch.max.bytes": fetch_max,
        "receive.message.max.bytes": (
            max(RECEIVE_DEFAULT_BYTES, fetch_max + 512) if fetch.bounded else RECEIVE_MAX_BYTES
        ),
    }


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    config = {**_base(settings), **settings.kafka_config, **overrides}
    return AdminClient(config)


# The header shapes of the driver's stubs (``confluent_kafka._types.HeadersType``, a private
# module): produce() takes a dict or (key, value) pairs; a consumed message has pairs.
HeaderValue = str | bytes | None
HeaderList = list[tuple[str, HeaderValue]]
Headers = dict[str, HeaderValue] | HeaderList


class LogPosition(NamedTuple):
    """Where a record sits in the log."""

    topic: str
    partition: int
    offset: int


def position_of(msg: Message) -> LogPosition:
    """The log position of a record the driver delivered without error (consumed, or
    acknowledged to a delivery callback), or of a partition-EOF event. The stubs make each
    part optional because other error events carry none; these always carry all three, so
    a gap is a driver fault."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise PermanentError(
            f"kafka: the driver delivered a record without a log position "
            f"(topic={topic!r}, partition={partition!r}, offset={offset!r})"
        )
    return LogPosition(topic, partition, offset)


def headers_for(
    event: Event,
    traceparent: str | None = None,
    *,
    value: bytes | None = None,
    signer: Key | None = None,
) -> HeaderList:
    """Headers that let tools route and trace a message without decoding its body, and,
    with ``signer``, the authenticator of its encoded ``value`` (schemas/auth.py)."""
    env = event.envelope
    headers: HeaderList = [
        ("event_type", event.event_type.encode()),
        ("event_id", env.event_id.encode()),
        ("correlation_id", env.correlation_id.encode()),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    if signer is not None:
        if value is None:
            raise ValueError("signing needs the encoded value")
        headers.append((AUTH_HEADER, authenticator(signer, value)))
    return headers


def header_list(headers: Headers | None) -> HeaderList:
    """``headers`` as (key, value) pairs, whichever shape the driver gave (a new list)."""
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def header_bytes(headers: Headers | None, name: str) -> bytes | None:
    """The first value of header ``name`` as bytes (None when absent or null)."""
    for key, value in header_list(headers):
        if key == name and value is not None:
            return value.encode() if isinstance(value, str) else value
    return None


def header_value(headers: Headers | None, name: str) -> str | None:
    raw = header_bytes(headers, name)
    return None if raw is None else raw.decode("utf-8", "replace")


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
        # the factory's fetch wait (20 ms): at 10 ms Tansu was seen to answer some
        # partitions with nothing at all after restarts, so their EOF never came (chaos run)
        **{"enable.partition.eof": True},
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
                        pos = position_of(m)
                        ends[pos.partition] = max(ends[pos.partition], pos.offset + 1)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        # the partition-EOF event carries the partition and its end offset
                        pos = position_of(m)
                        ends[pos.partition] = max(ends[pos.partition], pos.offset)
                        waiting.discard(pos.partition)
                    else:
                        raise translate(err)
        return ends
    finally:
        consumer.close()
