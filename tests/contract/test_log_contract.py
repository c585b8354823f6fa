"""One contract for the log ports, run against librdkafka on the real broker (Tansu,
through ``infra.kafka``'s factories and the ``settings`` fixture) and against the
in-memory twin.

Where they differed, the twin was changed (the real adapter is the reference). Waits
are generous for the real broker: its first group join takes a few seconds.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from blobledger.infra.memory.log import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from blobledger.infra.settings import Settings

if TYPE_CHECKING:  # the static half of the contract: mypy checks both satisfy the ports
    from confluent_kafka import Consumer, Producer

    from blobledger.schemas.ports import LogConsumer, LogProducer

    def _ports(
        p: Producer, c: Consumer, ip: InMemoryProducer, ic: InMemoryConsumer
    ) -> tuple[LogProducer, LogConsumer, LogProducer, LogConsumer]:
        return p, c, ip, ic


#: how long to wait for records that are there (the real first poll includes a group join)
WAIT = 20.0


@dataclass
class Log:
    """Makes producers and consumers of one implementation, on a fresh topic."""

    kind: str
    topic: str
    partitions: int
    settings: Settings
    broker: InMemoryBroker | None = None
    _closing: list[Any] = field(default_factory=list)

    def producer(self) -> Any:
        if self.broker is not None:
            return InMemoryProducer(self.broker)
        from blobledger.infra.kafka import make_producer

        return make_producer(self.settings)

    def consumer(self, group: str | None = None, **config: Any) -> Any:
        """A consumer in ``group`` (a fresh one by default); ``config``: driver keys."""
        group = group or f"{self.settings.worker_group}-{uuid.uuid4().hex[:8]}"
        if self.broker is not None:
            c: Any = InMemoryConsumer(self.broker, group, config=config)
        else:
            from blobledger.infra.kafka import make_consumer

            c = make_consumer(self.settings, group, **config)
        self._closing.append(c)
        return c

    def close_all(self) -> None:
        for c in self._closing:
            c.close()  # a second close is a no-op on both


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("kafka", marks=pytest.mark.integration),
    ]
)
def log(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Log]:
    if request.param == "memory":
        settings = Settings.from_env(
            {"BLOBLEDGER_DATA_DIR": str(tmp_path), "BLOBLEDGER_TOPIC_PREFIX": "contract"}
        )
        broker = InMemoryBroker.for_settings(settings)
        kit = Log("memory", settings.events_topic, settings.partitions, settings, broker)
    else:
        settings = request.getfixturevalue("settings")
        kit = Log("kafka", settings.events_topic, settings.partitions, settings)
    yield kit
    kit.close_all()


def records(consumer: Any, count: int, timeout: float = WAIT) -> list[Any]:
    """``count`` records (error events skipped), or fail after ``timeout``."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    assert len(got) == count, f"{len(got)} of {count} records within {timeout} s"
    return got


def subscribed(
    log: Log, group: str | None = None, config: dict[str, Any] | None = None
) -> tuple[Any, list[str]]:
    """A consumer subscribed to the topic, and the rebalance callbacks it saw."""
    seen: list[str] = []
    c = log.consumer(group, **(config or {}))
    c.subscribe(
        [log.topic],
        on_assign=lambda _c, ps: seen.append(f"assign:{len(ps)}"),
        on_revoke=lambda _c, ps: seen.append(f"revoke:{len(ps)}"),
    )
    return c, seen


def send(log: Log, *pairs: tuple[bytes | None, bytes], **kw: Any) -> None:
    p = log.producer()
    for key, value in pairs:
        p.produce(log.topic, value=value, key=key, **kw)
    assert p.flush(WAIT) == 0


# --- producing and reading back -----------------------------------------------------------------
def test_records_come_back_in_order_per_partition(log: Log) -> None:
    sent = [(f"k{i % 3}".encode(), f"v{i}".encode()) for i in range(12)]
    send(log, *sent)
    c, _ = subscribed(log)
    got = records(c, len(sent))
    by_key: dict[bytes | None, list[bytes | None]] = {}
    for m in got:
        by_key.setdefault(m.key(), []).append(m.value())
    assert by_key == {k: [v for kk, v in sent if kk == k] for k in {k for k, _ in sent}}
    for p in {m.partition() for m in got}:
        offsets = [m.offset() for m in got if m.partition() == p]
        assert offsets == list(range(len(offsets)))  # a fresh topic: 0, 1, 2, ...
    assert all(m.topic() == log.topic for m in got)


def test_a_key_always_lands_on_the_partition_librdkafka_picks(log: Log) -> None:
    keys = [f"object-{i}".encode() for i in range(8)]
    send(log, *[(k, b"x") for k in keys * 2])
    c, _ = subscribed(log)
    placed: dict[bytes | None, set[int]] = {}
    for m in records(c, 16):
        placed.setdefault(m.key(), set()).add(m.partition())
    # one partition per key: crc32(key) % partitions (librdkafka's consistent_random)
    assert placed == {k: {zlib.crc32(k) % log.partitions} for k in keys}


def test_headers_keys_and_values_round_trip(log: Log) -> None:
    p = log.producer()
    p.produce(
        log.topic,
        value=b"with headers",
        key=b"h",
        headers=[("event_type", b"BlobStored"), ("text", "utf-8 str"), ("empty", None)],
    )
    p.produce(log.topic, value=None, key=b"h")  # a tombstone, no headers
    p.produce(log.topic, value="a str value", key=b"h")
    assert p.flush(WAIT) == 0
    c, _ = subscribed(log)
    first, tombstone, text = sorted(records(c, 3), key=lambda m: m.offset())
    assert first.headers() == [
        ("event_type", b"BlobStored"),
        ("text", b"utf-8 str"),
        ("empty", None),
    ]
    assert first.value() == b"with headers" and first.key() == b"h"
    assert tombstone.value() is None and tombstone.headers() is None
    assert text.value() == b"a str value" and len(text) == len(b"a str value")


def test_delivery_callbacks_fire_from_flush_with_the_offset(log: Log) -> None:
    p = log.producer()
    reports: list[tuple[Any, Any]] = []
    for i in range(3):
        p.produce(
            log.topic,
            value=f"v{i}".encode(),
            key=b"same",
            on_delivery=lambda err, msg: reports.append((err, msg)),
        )
    assert reports == [] and len(p) == 3 and bool(p)  # served by poll/flush only
    assert p.flush(WAIT) == 0 and len(p) == 0
    assert [err for err, _ in reports] == [None, None, None]
    partition = zlib.crc32(b"same") % log.partitions
    assert [(m.topic(), m.partition(), m.offset()) for _, m in reports] == [
        (log.topic, partition, o) for o in range(3)
    ]
    assert [m.value() for _, m in reports] == [b"v0", b"v1", b"v2"]
    assert p.poll(0) == 0  # nothing left to serve


def test_poll_serves_delivery_callbacks_too(log: Log) -> None:
    p = log.producer()
    reports: list[Any] = []
    p.produce(log.topic, value=b"x", key=b"k", on_delivery=lambda err, msg: reports.append(err))
    deadline = time.monotonic() + WAIT
    while not reports and time.monotonic() < deadline:
        p.poll(0.1)
    assert reports == [None]


# --- the consumer ---------------------------------------------------------------------------------
def test_first_poll_assigns_every_partition_and_close_revokes(log: Log) -> None:
    send(log, (b"k", b"v"))
    c, seen = subscribed(log)
    records(c, 1)
    assert seen == [f"assign:{log.partitions}"]
    assert sorted(tp.partition for tp in c.assignment()) == list(range(log.partitions))
    c.close()
    assert seen == [f"assign:{log.partitions}", f"revoke:{log.partitions}"]
    with pytest.raises(RuntimeError):
        c.poll(0)


def test_seek_rereads(log: Log) -> None:
    send(log, *[(b"seek", f"v{i}".encode()) for i in range(4)])
    c, _ = subscribed(log)
    first = records(c, 4)
    assert [m.value() for m in first] == [b"v0", b"v1", b"v2", b"v3"]
    c.seek(TopicPartition(log.topic, first[0].partition(), 1))
    again = records(c, 3)
    assert [(m.offset(), m.value()) for m in again] == [(1, b"v1"), (2, b"v2"), (3, b"v3")]


def test_seek_outside_the_assignment_is_refused(log: Log) -> None:
    c = log.consumer()
    c.assign([TopicPartition(log.topic, 0)])
    with pytest.raises(KafkaException) as e:
        c.seek(TopicPartition(log.topic, 1, 0))
    assert e.value.args[0].code() in (KafkaError._STATE, KafkaError._UNKNOWN_PARTITION)


def test_a_new_member_resumes_after_the_committed_offset(log: Log) -> None:
    send(log, *[(b"resume", f"v{i}".encode()) for i in range(5)])
    group = f"{log.settings.worker_group}-{uuid.uuid4().hex[:8]}"
    first, _ = subscribed(log, group)
    got = records(first, 5)
    done = got[2]
    committed = first.commit(message=done, asynchronous=False)
    assert [(tp.topic, tp.partition, tp.offset) for tp in committed] == [
        (log.topic, done.partition(), done.offset() + 1)
    ]
    first.close()

    second, _ = subscribed(log, group)
    rest = records(second, 2)
    assert [(m.offset(), m.value()) for m in rest] == [(3, b"v3"), (4, b"v4")]
    assert second.poll(1.0) is None
    tp = TopicPartition(log.topic, done.partition())
    assert [t.offset for t in second.committed([tp], WAIT)] == [3]


def test_commit_with_offsets_and_without_anything_stored(log: Log) -> None:
    send(log, (b"offsets", b"v0"), (b"offsets", b"v1"))
    c, _ = subscribed(log)
    m = records(c, 2)[0]
    tp = TopicPartition(log.topic, m.partition(), m.offset() + 1)
    assert c.commit(offsets=[tp], asynchronous=True) is None
    # make_consumer does not store offsets on its own, so a bare commit has nothing to send
    with pytest.raises(KafkaException) as e:
        c.commit(asynchronous=False)
    assert e.value.args[0].code() == KafkaError._NO_OFFSET
    other = TopicPartition(log.topic, (m.partition() + 1) % log.partitions)
    deadline = time.monotonic() + WAIT
    while c.committed([tp], WAIT)[0].offset != m.offset() + 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the asynchronous commit lands shortly after
    assert [t.offset for t in c.committed([tp, other], WAIT)] == [m.offset() + 1, OFFSET_INVALID]


def test_pause_stops_a_partition_and_resume_restarts_it(log: Log) -> None:
    send(log, (b"paused", b"v0"))
    c, _ = subscribed(log)
    m = records(c, 1)[0]
    tp = TopicPartition(log.topic, m.partition())
    c.pause([tp])
    send(log, (b"paused", b"v1"))
    assert c.poll(1.5) is None
    c.resume([tp])
    again = records(c, 1)[0]
    assert (again.partition(), again.offset(), again.value()) == (m.partition(), 1, b"v1")


def test_poll_returns_none_once_the_timeout_passes(log: Log) -> None:
    send(log, (b"k", b"v"))
    c, _ = subscribed(log)
    records(c, 1)
    started = time.monotonic()
    assert c.poll(0.6) is None
    assert time.monotonic() - started >= 0.5


def test_consume_waits_for_the_batch_or_the_timeout(log: Log) -> None:
    send(log, *[(b"batch", f"v{i}".encode()) for i in range(3)])
    c, _ = subscribed(log)
    records(c, 1)
    started = time.monotonic()
    batch = c.consume(100, 1.0)
    assert [m.value() for m in batch if m.error() is None] == [b"v1", b"v2"]
    assert time.monotonic() - started >= 0.9  # librdkafka fills the batch until the timeout


def test_partition_eof_events_when_asked_for(log: Log) -> None:
    send(log, (b"eof", b"v0"))
    c, _ = subscribed(log, config={"enable.partition.eof": True})
    m = records(c, 1)[0]
    deadline, eof = time.monotonic() + WAIT, None
    while eof is None and time.monotonic() < deadline:
        e = c.poll(0.5)
        if e is not None and e.error() is not None and e.partition() == m.partition():
            eof = e
    assert eof is not None and eof.error().code() == KafkaError._PARTITION_EOF
    assert eof.offset() == 1
