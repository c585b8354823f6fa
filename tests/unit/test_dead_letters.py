"""Dead letters on the in-memory log: every record can be dead-lettered (too large ones as
references), a letter the broker does not acknowledge is sent again and holds the
checkpoint back until it is, and a source record is dead-lettered once, whoever meets it
again (the same projector after a failed batch, a restarted one, a replay)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import ResourceType
from structlog.testing import capture_logs

from blobledger.infra.dlq import HEAD_BYTES, DeadLetterIndex, DeadLetters, describe_letter
from blobledger.infra.kafka import RECEIVE_MAX_BYTES, fetch_sizes, header_value
from blobledger.infra.limits import FetchLimit, Source, discover
from blobledger.infra.memory import (
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    MemoryKeys,
)
from blobledger.infra.memory.log import InMemoryMessage
from blobledger.infra.settings import Settings
from blobledger.projectors.memory import InMemoryReadModel
from blobledger.projectors.rows import BatchWrite
from blobledger.projectors.runner import Projector
from blobledger.schemas.errors import CodecError, TransientError

from .twins import unit_settings


class FakeTime:
    """A clock that moves only when slept on, so backoff costs a test nothing."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


# --- the twin refuses what librdkafka refuses ----------------------------------------------------
def _accepts(producer: Any, key: bytes | None, value: bytes, headers: Any) -> bool:
    try:
        producer.produce("size-check", key=key, value=value, headers=headers)
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
        return False
    return True


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        (None, None),
        (b"k" * 200, None),
        (None, [("abc", b"12345"), ("none", None)]),
        (b"key", [("event_type", b"x" * 63), ("long", b"y" * 300)]),
    ],
)
def test_the_twin_producer_refuses_exactly_what_librdkafka_refuses(
    key: bytes | None, headers: Any
) -> None:
    limit = 2000
    # produce() checks the size before anything reaches a broker: none is needed here
    real = Producer(
        {"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": limit, "log_level": 0}
    )
    twin = InMemoryProducer(InMemoryBroker(), config={"message.max.bytes": limit})
    sizes = range(limit - 700, limit + 5)
    assert [_accepts(real, key, b"v" * n, headers) for n in sizes] == [
        _accepts(twin, key, b"v" * n, headers) for n in sizes
    ]
    assert not _accepts(twin, key, b"v" * limit, headers)  # the boundary is inside the range
    real.purge()


# --- size limits: the topic's, else the broker's, else assumed ----------------------------------
class FakeAdmin:
    """AdminClient's describe_configs/list_topics over fixed answers (None: refused)."""

    def __init__(self, topics: dict[str, dict[str, str] | None], broker: dict[str, str]):
        self.topics, self.broker = topics, broker

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        out = {}
        for r in resources:
            entries = self.topics.get(r.name) if r.restype == ResourceType.TOPIC else self.broker
            f: Future[Any] = Future()
            if entries is None:
                f.set_exception(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
            else:
                f.set_result({k: SimpleNamespace(value=v) for k, v in entries.items()})
            out[r] = f
        return out

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(brokers={111: object()})


def test_limits_come_from_the_topic_else_the_broker(tmp_path: Path) -> None:
    s = unit_settings(tmp_path)
    admin = FakeAdmin(
        {s.events_topic: {"max.message.bytes": "2000000"}, s.commands_topic: {}, s.dlq_topic: None},
        {"message.max.bytes": "3000000"},
    )
    limits = discover(s, admin=admin)  # type: ignore[arg-type]
    assert (limits.of(s.events_topic).max_bytes, limits.of(s.events_topic).source) == (
        2_000_000,
        Source.TOPIC,
    )
    assert (limits.of(s.dlq_topic).max_bytes, limits.of(s.dlq_topic).source) == (
        3_000_000,
        Source.BROKER,
    )
    assert limits.fetch(s.events_topic, s.commands_topic) == FetchLimit(3_000_000, True)


def test_a_broker_that_reports_nothing_leaves_every_limit_assumed(tmp_path: Path) -> None:
    """What Tansu 0.6 answers: empty configs for topics and broker."""
    s = unit_settings(tmp_path, kafka_max_message_bytes="5000")
    tansu = FakeAdmin({t: {} for t in s.topics}, {})
    limits = discover(s, admin=tansu)  # type: ignore[arg-type]
    assert {limits.of(t).source for t in s.topics} == {Source.ASSUMED}
    assert limits.of(s.dlq_topic).max_bytes == 5000
    assert limits.fetch(s.events_topic) == FetchLimit(5000, False)


def test_consumers_can_fetch_every_record_the_broker_may_hold() -> None:
    stated = fetch_sizes(FetchLimit(200_000_000, True))
    assert stated["max.partition.fetch.bytes"] >= 200_000_000
    assert stated["fetch.max.bytes"] >= 200_000_000
    assert stated["receive.message.max.bytes"] >= stated["fetch.max.bytes"] + 512
    # no stated limit: the broker may hold anything, only the protocol bounds a response
    assert fetch_sizes(FetchLimit(1_048_588, False))["receive.message.max.bytes"] == (
        RECEIVE_MAX_BYTES
    )
    small = fetch_sizes(FetchLimit(1000, True))  # never below make_consumer's own sizes
    assert small["fetch.max.bytes"] == 52428800 and small["receive.message.max.bytes"] >= 10**8


# --- rig -----------------------------------------------------------------------------------------
class Rig:
    """A broker with the project's topics and a way to put raw records on the events topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = InMemoryBroker.for_settings(settings)
        self.source = InMemoryProducer(self.broker, config={"message.max.bytes": 50_000_000})
        self.time = FakeTime()
        self._opened: list[DeadLetters] = []

    def record(self, value: bytes, key: bytes = b"k") -> InMemoryMessage:
        reports: list[InMemoryMessage] = []
        self.source.produce(
            self.settings.events_topic,
            value=value,
            key=key,
            headers=[("event_type", b"Garbage")],
            on_delivery=lambda err, msg: reports.append(msg),
        )
        self.source.flush()
        (report,) = reports
        return self.broker.messages(self.settings.events_topic, report.partition())[report.offset()]

    def dead_letters(self, producer: Any = None, **config: Any) -> DeadLetters:
        """A DeadLetters as a new process opens it: its own producer and index."""
        topic = self.settings.dlq_topic
        consumer = InMemoryConsumer(self.broker, "dlq-index", config={"enable.partition.eof": True})
        index = DeadLetterIndex(
            consumer, topic, lambda: range(self.broker.topics().get(topic, 0)), timeout=2
        )
        letters = DeadLetters(
            producer or InMemoryProducer(self.broker, config=config),
            topic,
            index=index,
            sleep=self.time.sleep,
            clock=self.time.clock,
        )
        self._opened.append(letters)
        return letters

    def letters(self) -> list[InMemoryMessage]:
        return self.broker.messages(self.settings.dlq_topic)

    def close(self) -> None:
        for d in self._opened:
            d.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(unit_settings(tmp_path))
    yield r
    r.close()


# --- references ----------------------------------------------------------------------------------
def test_a_small_record_is_dead_lettered_whole(rig: Rig) -> None:
    msg = rig.record(b"\x00not avro")
    dlq = rig.dead_letters()
    assert dlq.send(msg, CodecError("not avro"))
    dlq.flush()
    (letter,) = rig.letters()
    assert letter.value() == b"\x00not avro" and letter.key() == b"k"
    d = describe_letter(letter)
    assert not d.reference and d.size == 9 and d.error_code == "codec"
    assert d.sha256 == hashlib.sha256(b"\x00not avro").hexdigest()


def _assert_reference(rig: Rig, letter: InMemoryMessage, msg: InMemoryMessage) -> None:
    value = msg.value() or b""
    h = letter.headers()
    assert letter.value() == value[:HEAD_BYTES] and letter.key() == msg.key()
    assert header_value(h, "dlq.source_topic") == rig.settings.events_topic
    assert header_value(h, "dlq.source_partition") == str(msg.partition())
    assert header_value(h, "dlq.source_offset") == str(msg.offset())
    assert header_value(h, "event_type") == "Garbage"  # small original headers are kept
    d = describe_letter(letter)
    assert d.reference and d.error_code == "codec"
    assert (d.size, d.sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert (d.source_partition, d.source_offset) == (msg.partition(), msg.offset())
    where = f"{rig.settings.events_topic} partition {msg.partition()} at offset {msg.offset()}"
    assert where in d.refusal() and "reference" in d.refusal()


def test_a_record_the_producer_refuses_is_dead_lettered_as_a_reference(rig: Rig) -> None:
    """librdkafka refuses it in produce() (MSG_SIZE_TOO_LARGE, the testers' crash)."""
    big = rig.record(os.urandom(1_500_000))
    dlq = rig.dead_letters()  # the producer's default message.max.bytes: 1,000,000
    with capture_logs() as logs:
        assert dlq.send(big, CodecError("not avro"))
        dlq.flush()
    (letter,) = rig.letters()
    _assert_reference(rig, letter, big)
    assert any("reference" in e["event"] and e["size"] == 1_500_000 for e in logs)


def test_a_record_the_broker_refuses_is_dead_lettered_as_a_reference(rig: Rig) -> None:
    """The producer lets it go, the DLQ topic's own limit is lower: the delivery report
    says MSG_SIZE_TOO_LARGE and the reference follows."""
    rig.broker.max_message_bytes[rig.settings.dlq_topic] = 100_000
    msg = rig.record(os.urandom(300_000))
    dlq = rig.dead_letters()
    dlq.send(msg, CodecError("not avro"))
    dlq.flush()
    (letter,) = rig.letters()
    _assert_reference(rig, letter, msg)


# --- retries -------------------------------------------------------------------------------------
class FlakyProducer(InMemoryProducer):
    """Fails the next ``fail`` sends: raised from produce() (``raising``) or reported to the
    delivery callback; with ``written``, a reported failure happened after the broker
    appended the record (an acknowledgement lost on the way back)."""

    def __init__(self, broker: InMemoryBroker, fail: int, *, raising: bool = False) -> None:
        super().__init__(broker)
        self.fail = fail
        self.raising = raising
        self.written = False
        self.attempts = 0

    def produce(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> None:
        self.attempts += 1
        if self.fail <= 0:
            return super().produce(topic, value=value, key=key, **kw)
        self.fail -= 1
        if self.raising:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport"))
        callback = kw.pop("on_delivery")
        if self.written:
            super().produce(topic, value=value, key=key, **kw)
        failed = InMemoryMessage(topic, None, None, key, value)
        callback(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), failed)
        return None


@pytest.mark.parametrize("raising", [False, True], ids=["reported", "raised"])
def test_a_failed_send_is_sent_again_with_backoff_and_logged(rig: Rig, raising: bool) -> None:
    dlq = rig.dead_letters(FlakyProducer(rig.broker, 3, raising=raising))
    msg = rig.record(b"\x00bad")
    with capture_logs() as logs:
        dlq.send(msg, CodecError("bad"))
        dlq.flush()
    assert len(rig.letters()) == 1 and dlq.pending == 0
    assert rig.time.sleeps == [0.5, 1.0, 2.0]  # exponential backoff between the attempts
    retries = [e for e in logs if e["event"] == "dead letters not acknowledged; sending them again"]
    assert len(retries) == 3 and all(e["log_level"] == "warning" for e in retries)


def test_a_letter_whose_acknowledgement_was_lost_is_not_sent_twice(rig: Rig) -> None:
    producer = FlakyProducer(rig.broker, 1)
    producer.written = True  # the broker has it; the report says it failed
    dlq = rig.dead_letters(producer)
    dlq.send(rig.record(b"\x00bad"), CodecError("bad"))
    dlq.flush()
    assert len(rig.letters()) == 1 and producer.attempts == 1  # the index found it


def test_flush_gives_up_with_a_transient_error_and_keeps_the_letter(rig: Rig) -> None:
    producer = FlakyProducer(rig.broker, 1000)
    dlq = rig.dead_letters(producer)
    msg = rig.record(b"\x00bad")
    dlq.send(msg, CodecError("bad"))
    with pytest.raises(TransientError, match="not acknowledged"):
        dlq.flush(timeout=3)
    assert rig.letters() == [] and dlq.pending == 1
    assert not dlq.send(msg, CodecError("bad"))  # already on its way: not queued twice
    producer.fail = 0
    dlq.flush()
    assert len(rig.letters()) == 1 and dlq.pending == 0


# --- the projector: never past an unacknowledged letter, never a second letter ---------------
class CrashingModel(InMemoryReadModel):
    """Its next ``crashes`` writes fail as a lost connection does (nothing is committed)."""

    crashes = 0

    def write(self, batch: BatchWrite) -> None:
        if self.crashes:
            self.crashes -= 1
            raise TransientError("postgres: connection lost")
        super().write(batch)


def _projector(rig: Rig, model: InMemoryReadModel, dlq: DeadLetters) -> Projector:
    p = Projector(
        rig.settings,
        consumer=InMemoryConsumer(
            rig.broker,
            rig.settings.projector_group,
            config={"partition.assignment.strategy": "roundrobin"},
        ),
        open_model=lambda: model,
        dead_letters=dlq,
        keyring=MemoryKeys().keyring,
    )
    p.subscribe()
    return p


def _garbage(rig: Rig) -> list[InMemoryMessage]:
    """An undecodable record and a later one on the same partition (the same key)."""
    return [rig.record(b"\x00first"), rig.record(b"\x00second", key=b"k")]


def test_the_checkpoint_never_passes_a_letter_the_broker_did_not_acknowledge(rig: Rig) -> None:
    producer = FlakyProducer(rig.broker, 1000)
    model = InMemoryReadModel()
    dlq = DeadLetters(producer, rig.settings.dlq_topic, sleep=rig.time.sleep, clock=rig.time.clock)
    p = _projector(rig, model, dlq)
    first, second = _garbage(rig)
    topic, part = rig.settings.events_topic, first.partition()
    try:
        for _ in range(2):  # the run loop retries a TransientError after its own backoff
            with pytest.raises(TransientError):
                p.process(p.poll_batch(1.0))
            assert model.checkpoints(topic).get(part, 0) == 0
        # the consumer went back: the same records come again, nothing is skipped
        again = p.poll_batch(1.0)
        assert [(m.partition(), m.offset()) for m in again] == [
            (part, first.offset()),
            (part, second.offset()),
        ]
        producer.fail = 0
        p.process(again)
        assert model.checkpoints(topic)[part] == (second.offset() or 0) + 1
        assert len(rig.letters()) == 2
    finally:
        p.close()


def test_a_restarted_projector_does_not_dead_letter_again(rig: Rig) -> None:
    """The crash falls between the DLQ's acknowledgement and the checkpoint's commit."""
    model = CrashingModel()
    model.crashes = 1
    a = _projector(rig, model, rig.dead_letters())
    first, second = _garbage(rig)
    with pytest.raises(TransientError, match="connection lost"):
        a.process(a.poll_batch(1.0))
    assert len(rig.letters()) == 2  # acknowledged, and the checkpoint did not move
    assert model.checkpoints(rig.settings.events_topic) == {}
    a.process(a.poll_batch(1.0))  # the same projector, after its backoff
    a.close()
    b = _projector(rig, model, rig.dead_letters())  # a new process on a lost checkpoint
    model.offsets.clear()
    b.process(b.poll_batch(1.0))
    b.close()
    assert len(rig.letters()) == 2
    assert b.totals.dead_letters == 2  # not folded, counted, not sent again
    assert model.checkpoints(rig.settings.events_topic)[first.partition()] == second.offset() + 1


def test_another_process_sees_what_the_dlq_holds_and_new_letters_since(rig: Rig) -> None:
    """A replay, or the next owner of a partition after a rebalance: its own index, caught
    up incrementally before it sends."""
    first, second = _garbage(rig)
    live, replay = rig.dead_letters(), rig.dead_letters()
    assert live.send(first, CodecError("bad"))
    live.flush()
    assert not replay.send(first, CodecError("bad"))
    replay.flush()
    assert live.send(second, CodecError("bad"))  # after replay's catch-up
    live.flush()
    assert not replay.send(second, CodecError("bad"))
    assert len(rig.letters()) == 2
    assert replay.index is not None and replay.index.consumer.assignment() == []  # idle
