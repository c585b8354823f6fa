"""In-memory twin of the log: a broker, a producer and a consumer that behave like
librdkafka (confluent-kafka) on the embedded Tansu broker, for unit tests.

The producer and consumer have the driver's method names, arguments, return values and
errors (``KafkaException`` with the driver's error codes), so code written for
``confluent_kafka.Producer``/``Consumer`` runs on them unchanged; partitions are real
``confluent_kafka.TopicPartition`` objects. Checked against the real adapter by
``tests/contract/test_log_contract.py``. What mirrors the driver, on purpose:

* keyed records go to ``crc32(key) % partitions`` (librdkafka's default
  ``consistent_random`` partitioner, so a key lands on the same partition as on the real
  broker); records without a key (or with an empty one) go to a random partition;
* delivery callbacks fire only from ``poll()``/``flush()``, on the calling thread, and a
  delivery report's message carries no headers (as the driver's does not); unserved
  reports count against ``max_queued`` (``BufferError`` when full, like
  ``queue.buffering.max.messages``); producing to a missing topic creates it (Tansu and
  Kafka's ``auto.create.topics.enable``), unless the broker is told not to;
* the consumer serves its group's rebalance callbacks from ``poll()``/``consume()``: the
  first call assigns every partition of the subscribed topics; with the default
  ``cooperative-sticky`` strategy (``make_consumer``'s) callbacks get the increments and
  ``assign()``/``unassign()`` are refused while subscribed, with an eager strategy
  (``range``/``roundrobin``) they get the whole assignment; a callback that does not
  assign leaves it to the twin, as the Python driver does; ``close()`` revokes;
* ``consume(n, timeout)`` waits until ``n`` messages or the timeout, like librdkafka's
  batch consume; ``commit()`` without arguments commits stored offsets only
  (``enable.auto.offset.store`` is off by default, as in ``make_consumer``), so it fails
  with ``_NO_OFFSET`` unless something was stored; seeking a partition that is not
  assigned fails with ``_STATE`` (``_UNKNOWN_PARTITION`` if it does not exist);
* ``produce()`` raises ``MSG_SIZE_TOO_LARGE`` for a record above the producer's
  ``message.max.bytes`` (default 1,000,000), sized as librdkafka sizes it
  (:func:`record_size`); a topic given ``max_message_bytes`` refuses bigger records in
  the delivery report, as a broker does with its ``max.message.bytes``.

Deliberately not modelled: more than one subscribed member per group (a second member
subscribing to a busy group is refused: partitions are not shared out), session
timeouts (``on_lost`` fires only through :meth:`InMemoryBroker.rebalance`), transactions
and ``read_committed``, retention and compaction, ``list_topics``/admin calls, and
compression (the broker's size check sees the uncompressed record). Every object is
thread-safe (the publisher polls its producer from a background thread while the caller
produces).
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    OFFSET_STORED,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

if TYPE_CHECKING:
    from blobledger.infra.settings import Settings

_Key = tuple[str, int]
_Callback = Callable[[Any, list[TopicPartition]], None]
Header = tuple[str, bytes | None]
#: what ``Message.headers()`` returns, as the driver's stubs type it (values are bytes or None)
HeaderList = list[tuple[str, str | bytes | None]]

#: librdkafka's default ``queue.buffering.max.messages``
MAX_QUEUED = 100_000
#: librdkafka's default ``message.max.bytes``
MESSAGE_MAX_BYTES = 1_000_000
#: what librdkafka adds to key, value and headers when it checks a record against
#: ``message.max.bytes`` (RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD; measured against the driver)
RECORD_OVERHEAD = 36


def _deadline(timeout: float | None) -> float | None:
    """The monotonic deadline of a driver-style timeout (None or negative: wait forever)."""
    if timeout is None or timeout < 0:
        return None
    return time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _error(code: int, text: str | None = None) -> KafkaException:
    return KafkaException(KafkaError(code, text) if text else KafkaError(code))


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _varint_size(n: int) -> int:
    """Bytes of ``n`` as a zigzag varint (how record v2 encodes lengths)."""
    zz = (n << 1) ^ (n >> 63)
    return max(1, (zz.bit_length() + 6) // 7)


def record_size(
    key: bytes | None, value: bytes | None, headers: Iterable[Header] | None = None
) -> int:
    """A record's size as librdkafka checks it against ``message.max.bytes``: key and
    value bytes, each header as varint-prefixed name and value, plus a fixed overhead."""
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, v in headers or ():
        raw = name.encode()
        size += _varint_size(len(raw)) + len(raw)
        size += _varint_size(-1 if v is None else len(v)) + len(v or b"")
    return size


def _headers(headers: Any) -> tuple[Header, ...] | None:
    """The driver's accepted header forms (list of pairs or dict; str values encoded)."""
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        out.append((name, _as_bytes(value, f"header {name!r}")))
    return tuple(out) or None


@dataclass(frozen=True, slots=True)
class _Record:
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] | None
    timestamp_ms: int


class InMemoryMessage:
    """A record or an event, with confluent's ``Message`` methods."""

    __slots__ = (
        "_error",
        "_headers",
        "_key",
        "_offset",
        "_partition",
        "_timestamp",
        "_topic",
        "_value",
    )

    def __init__(
        self,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Iterable[Header] | None = None,
        error: KafkaError | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._error = key, value, error
        self._headers = list(headers) if headers else None
        self._timestamp = timestamp_ms

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> HeaderList | None:
        return list(self._headers) if self._headers else None

    def error(self) -> KafkaError | None:
        return self._error

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._timestamp) if self._timestamp else (0, -1)

    def latency(self) -> float | None:
        return None

    def leader_epoch(self) -> int | None:
        return None

    def set_headers(self, headers: Any) -> None:
        self._headers = list(_headers(headers) or ()) or None

    def set_key(self, key: Any) -> None:
        self._key = _as_bytes(key, "key")

    def set_value(self, value: Any) -> None:
        self._value = _as_bytes(value, "value")

    def __len__(self) -> int:
        return len(self._value or b"")

    def __repr__(self) -> str:
        where = f"{self._topic}[{self._partition}]@{self._offset}"
        return f"InMemoryMessage({where}, error={self._error})"


class InMemoryBroker:
    """Topics of partitioned, append-only logs plus each group's committed offsets.

    ``partitions`` is the count for topics created without one (auto-created on produce
    unless ``auto_create_topics`` is False, then the send fails with ``_UNKNOWN_TOPIC``)."""

    def __init__(self, *, partitions: int = 1, auto_create_topics: bool = True) -> None:
        self.default_partitions = partitions
        self.auto_create_topics = auto_create_topics
        #: topic -> its max.message.bytes (topics without one take any size, as Tansu does)
        self.max_message_bytes: dict[str, int] = {}
        # one condition for all state: consumers wait on it for records and rebalances
        self._cond = threading.Condition(threading.RLock())
        self._logs: dict[str, list[list[_Record]]] = {}
        self._committed: dict[str, dict[_Key, int]] = {}
        self._members: dict[str, InMemoryConsumer] = {}
        self._rng = random.Random()

    @classmethod
    def for_settings(cls, settings: Settings) -> InMemoryBroker:
        """A broker holding the project's topics, as ``ensure_topics`` creates them."""
        from blobledger.infra.topics import topic_names

        broker = cls(partitions=settings.partitions)
        broker.create_topics(topic_names(settings))
        return broker

    # --- topics ------------------------------------------------------------------------------
    def create_topics(
        self,
        names: Iterable[str],
        partitions: int | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> None:
        """Create missing topics; existing ones keep their partitions. With
        ``max_message_bytes`` (the topic's ``max.message.bytes``) bigger records are refused."""
        count = partitions or self.default_partitions
        if count < 1:
            raise ValueError("a topic needs at least one partition")
        with self._cond:
            for name in names:
                self._logs.setdefault(name, [[] for _ in range(count)])
                if max_message_bytes is not None:
                    self.max_message_bytes[name] = max_message_bytes
            self._cond.notify_all()

    def topics(self) -> dict[str, int]:
        """Topic name -> partition count."""
        with self._cond:
            return {name: len(parts) for name, parts in self._logs.items()}

    def end_offset(self, topic: str, partition: int) -> int:
        """The next offset of a partition (its high watermark)."""
        with self._cond:
            return len(self._logs[topic][partition])

    def messages(self, topic: str, partition: int | None = None) -> list[InMemoryMessage]:
        """Every record of ``topic`` (or one partition), by partition then offset."""
        with self._cond:
            parts = self._logs.get(topic, [])
            chosen = range(len(parts)) if partition is None else [partition]
            return [self._message(topic, p, o) for p in chosen for o in range(len(parts[p]))]

    # --- groups ------------------------------------------------------------------------------
    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The group's committed offset (the next record it will read), or None."""
        with self._cond:
            return self._committed.get(group, {}).get((topic, partition))

    def rebalance(self, group: str, *, lost: bool = False) -> None:
        """Take the group member's partitions away and give them back, on its next poll:
        ``on_revoke`` (or ``on_lost``) with its assignment, then ``on_assign`` again, from
        the committed offsets. What a rebalance or an expired session looks like to it."""
        with self._cond:
            member = self._members.get(group)
            if member is not None:
                member._pending_loss = "lost" if lost else "revoke"
            self._cond.notify_all()

    # --- internals (callers hold self._cond where it matters) ---------------------------------
    def _message(self, topic: str, partition: int, offset: int) -> InMemoryMessage:
        r = self._logs[topic][partition][offset]
        return InMemoryMessage(
            topic, partition, offset, r.key, r.value, r.headers, timestamp_ms=r.timestamp_ms
        )

    def _append(self, topic: str, partition: int, record: _Record) -> tuple[int, int] | KafkaError:
        with self._cond:
            parts = self._logs.get(topic)
            if parts is None:
                if not self.auto_create_topics:
                    return KafkaError(KafkaError._UNKNOWN_TOPIC)
                self.create_topics([topic])
                parts = self._logs[topic]
            if partition < 0:
                # librdkafka's consistent_random: crc32 of a non-empty key, else random
                partition = (
                    zlib.crc32(record.key) % len(parts)
                    if record.key
                    else self._rng.randrange(len(parts))
                )
            elif partition >= len(parts):
                return KafkaError(KafkaError._UNKNOWN_PARTITION)
            limit = self.max_message_bytes.get(topic)
            if limit is not None and record_size(record.key, record.value, record.headers) > limit:
                return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            parts[partition].append(record)
            self._cond.notify_all()
            return partition, len(parts[partition]) - 1


class InMemoryProducer:
    """confluent's ``Producer`` on an :class:`InMemoryBroker`. A record is appended (and
    visible to consumers) when produced; its delivery report waits for ``poll``/``flush``."""

    def __init__(
        self,
        broker: InMemoryBroker,
        *,
        max_queued: int = MAX_QUEUED,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """``config`` takes the driver's keys; ``message.max.bytes`` is the one that changes
        behaviour here (others are accepted and ignored)."""
        self.broker = broker
        self.max_queued = max_queued
        self.message_max_bytes = int((config or {}).get("message.max.bytes", MESSAGE_MAX_BYTES))
        self._cond = threading.Condition()
        # every send has a report until poll/flush serves it, with or without a callback
        self._reports: deque[tuple[Callable[..., Any] | None, KafkaError | None, InMemoryMessage]]
        self._reports = deque()
        self._queued = 0  # reports reserved by produce() and not yet served

    def produce(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int = -1,
        callback: Callable[..., Any] | None = None,
        on_delivery: Callable[..., Any] | None = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise TypeError("topic must be a non-empty str")
        record = _Record(
            _as_bytes(key, "key"),
            _as_bytes(value, "value"),
            _headers(headers),
            timestamp or time.time_ns() // 1_000_000,
        )
        if record_size(record.key, record.value, record.headers) > self.message_max_bytes:
            # checked before the queue, as librdkafka does, and raised from produce()
            raise _error(
                KafkaError.MSG_SIZE_TOO_LARGE,
                "Unable to produce message: Broker: Message size too large",
            )
        with self._cond:
            if self._queued >= self.max_queued:
                raise BufferError(KafkaError(KafkaError._QUEUE_FULL).str())
            self._queued += 1
        placed = self.broker._append(topic, partition, record)
        if isinstance(placed, KafkaError):
            err: KafkaError | None = placed
            report = InMemoryMessage(
                topic, partition, OFFSET_INVALID, record.key, record.value, error=placed
            )
        else:
            err = None
            report = InMemoryMessage(
                topic,
                placed[0],
                placed[1],
                record.key,
                record.value,
                timestamp_ms=record.timestamp_ms,
            )
        with self._cond:
            self._reports.append((on_delivery or callback, err, report))
            self._cond.notify_all()

    def poll(self, timeout: float | None = -1) -> int:
        """Serve delivery callbacks; waits up to ``timeout`` for one if none is ready."""
        deadline = _deadline(timeout)
        with self._cond:
            while not self._reports:
                left = _left(deadline)
                if left == 0.0:
                    return 0
                self._cond.wait(left)
        return self._serve()

    def flush(self, timeout: float | None = -1) -> int:
        """Serve every delivery callback; returns how many reports are still queued (0)."""
        self._serve()
        return len(self)

    def _serve(self) -> int:
        served = 0
        while True:
            with self._cond:
                if not self._reports:
                    return served
                cb, err, msg = self._reports.popleft()
                self._queued -= 1
            served += 1
            if cb is not None:
                cb(err, msg)  # outside the lock: a callback may produce again

    def __len__(self) -> int:
        with self._cond:
            return self._queued

    def __bool__(self) -> bool:
        # as the driver's: an empty queue must not make the producer falsy (`p or make_...`)
        return True


@dataclass(slots=True)
class _Partition:
    #: next offset to fetch; None until resolved (committed offset or auto.offset.reset)
    position: int | None
    #: a logical start (OFFSET_BEGINNING/END/STORED) still to resolve at the next fetch
    start: int = OFFSET_STORED
    consumed: bool = False
    eof_sent: bool = False


class InMemoryConsumer:
    """confluent's ``Consumer`` on an :class:`InMemoryBroker`, as the only member of its
    group (see the module docstring).

    ``config`` takes the driver's keys; those that change behaviour here are
    ``group.id``, ``auto.offset.reset``, ``partition.assignment.strategy``,
    ``enable.partition.eof``, ``enable.auto.offset.store`` and ``enable.auto.commit``.
    Defaults are ``make_consumer``'s (earliest, no auto commit or store, cooperative-sticky);
    other keys (``bootstrap.servers``, timeouts, ...) are accepted and ignored."""

    def __init__(
        self,
        broker: InMemoryBroker,
        group_id: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.partition.eof": False,
            "enable.auto.offset.store": False,
            "enable.auto.commit": False,
            **(config or {}),
        }
        if group_id is not None:
            conf["group.id"] = group_id
        if not conf.get("group.id"):
            raise ValueError("group.id must be set")
        reset = str(conf["auto.offset.reset"]).lower()
        if reset not in ("earliest", "smallest", "beginning", "latest", "largest", "end"):
            raise ValueError(f"unsupported auto.offset.reset {reset!r}")
        self.broker = broker
        self.group_id: str = str(conf["group.id"])
        self._reset_earliest = reset in ("earliest", "smallest", "beginning")
        self._cooperative = "cooperative" in str(conf["partition.assignment.strategy"])
        self._partition_eof = _flag(conf["enable.partition.eof"])
        self._auto_store = _flag(conf["enable.auto.offset.store"])
        self._auto_commit = _flag(conf["enable.auto.commit"])
        self._lock = broker._cond  # one lock with the broker: fetches wait on its condition
        self._assigned: dict[_Key, _Partition] = {}
        self._paused: set[_Key] = set()
        self._stored: dict[_Key, int] = {}
        self._subscription: list[str] | None = None
        self._callbacks: dict[str, _Callback | None] = {}
        self._owned: set[_Key] = set()  # what the group gave us (vs. assign() by hand)
        self._joined = False
        self._missing_reported: set[str] = set()
        self._pending_loss: str | None = None
        self._in_rebalance = False
        self._rebalance_handled = False
        self._rr = 0
        self._closed = False

    # --- group membership ----------------------------------------------------------------------
    def subscribe(
        self,
        topics: list[str],
        on_assign: _Callback | None = None,
        on_revoke: _Callback | None = None,
        on_lost: _Callback | None = None,
    ) -> None:
        with self._lock:
            self._check_open()
            other = self.broker._members.get(self.group_id)
            if other is not None and other is not self:
                raise RuntimeError(
                    f"InMemoryConsumer: group {self.group_id!r} already has a subscribed "
                    "member; the twin models single-member groups (close the other first)"
                )
            self.broker._members[self.group_id] = self
            self._subscription = list(topics)
            self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
            self._missing_reported.clear()
            self._lock.notify_all()

    def unsubscribe(self) -> None:
        self._check_open()
        self._leave_group()

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Replace the assignment (each partition starts at its ``offset``: a logical
        offset, or the committed one for OFFSET_STORED/INVALID)."""
        with self._lock:
            self._check_open()
            self._refuse_eager_call_when_cooperative("Failed to set assignment")
            self._assigned = {}
            self._add(partitions)
            self._rebalance_handled = True
            self._lock.notify_all()

    def unassign(self) -> None:
        with self._lock:
            self._check_open()
            self._refuse_eager_call_when_cooperative("Failed to remove assignment")
            self._assigned = {}
            self._rebalance_handled = True

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._check_open()
            self._add(partitions)
            self._rebalance_handled = True
            self._lock.notify_all()

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._check_open()
            for tp in partitions:
                self._assigned.pop((tp.topic, tp.partition), None)
            self._rebalance_handled = True

    def assignment(self) -> list[TopicPartition]:
        with self._lock:
            self._check_open()
            return [TopicPartition(t, p, OFFSET_STORED) for t, p in self._assigned]

    # --- reading ---------------------------------------------------------------------------------
    def poll(self, timeout: float | None = -1) -> InMemoryMessage | None:
        """The next record (or error event), or None once ``timeout`` passes."""
        batch = self._fetch(1, _deadline(timeout))
        return batch[0] if batch else None

    def consume(self, num_messages: int = 1, timeout: float | None = -1) -> list[InMemoryMessage]:
        """Up to ``num_messages``; waits for that many until ``timeout`` (librdkafka does)."""
        if not 0 <= num_messages <= 1_000_000:
            raise ValueError("num_messages must be between 0 and 1000000 (1M)")
        return self._fetch(num_messages, _deadline(timeout))

    def _fetch(self, limit: int, deadline: float | None) -> list[InMemoryMessage]:
        self._check_open()
        out: list[InMemoryMessage] = []
        while True:
            self._serve_rebalance()
            with self._lock:
                self._check_open()
                if self._auto_commit and self._stored:
                    self._store_commit(dict(self._stored))
                while len(out) < limit:
                    msg = self._next_message()
                    if msg is None:
                        break
                    out.append(msg)
                if len(out) >= limit or limit == 0:
                    return out
                left = _left(deadline)
                if left == 0.0:
                    return out
                if self._in_rebalance or not self._needs_rebalance():
                    self._lock.wait(left if left is not None else 1.0)

    def seek(self, partition: TopicPartition) -> None:
        """Fetch ``partition`` from ``partition.offset`` next (it must be assigned)."""
        with self._lock:
            self._check_open()
            key = (partition.topic, partition.partition)
            state = self._assigned.get(key)
            if state is None:
                parts = self.broker._logs.get(partition.topic)
                known = parts is not None and 0 <= partition.partition < len(parts)
                raise _error(
                    KafkaError._STATE if known else KafkaError._UNKNOWN_PARTITION,
                    f"Failed to seek to offset {partition.offset}: "
                    + ("Local: Erroneous state" if known else "Local: Unknown partition"),
                )
            self._start_at(state, partition.offset)
            self._lock.notify_all()

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching these partitions (assigned or not: the flag outlives assignment)."""
        with self._lock:
            self._check_open()
            self._paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._check_open()
            self._paused.difference_update((tp.topic, tp.partition) for tp in partitions)
            self._lock.notify_all()

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The next offset to be consumed, OFFSET_INVALID before the first record."""
        with self._lock:
            self._check_open()
            out = []
            for tp in partitions:
                state = self._assigned.get((tp.topic, tp.partition))
                ok = state is not None and state.consumed and state.position is not None
                offset = state.position if ok and state is not None else None
                out.append(
                    TopicPartition(
                        tp.topic, tp.partition, offset if offset is not None else OFFSET_INVALID
                    )
                )
            return out

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        with self._lock:
            self._check_open()
            parts = self.broker._logs.get(partition.topic)
            if parts is None or not 0 <= partition.partition < len(parts):
                raise _error(
                    KafkaError._UNKNOWN_PARTITION,
                    "Failed to get watermark offsets: Local: Unknown partition",
                )
            return 0, len(parts[partition.partition])

    # --- offsets ---------------------------------------------------------------------------------
    @overload
    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        *,
        asynchronous: Literal[True] = ...,
    ) -> None: ...

    @overload
    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        *,
        asynchronous: Literal[False],
    ) -> list[TopicPartition]: ...

    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        *,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        """Commit ``message``'s offset + 1, the given ``offsets``, or else the stored ones,
        for the group. Synchronous: the committed partitions; asynchronous: None (the
        twin commits at once either way)."""
        with self._lock:
            self._check_open()
            if message is not None and offsets is not None:
                raise ValueError("message and offsets are mutually exclusive")
            if message is not None:
                if message.error() is not None:
                    raise KafkaException(message.error())
                wanted = {(message.topic(), message.partition()): message.offset() + 1}
            elif offsets is not None:
                wanted = {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset >= 0}
            else:
                wanted = dict(self._stored)
            if not wanted:
                raise _error(KafkaError._NO_OFFSET, "Commit failed: Local: No offset stored")
            done = self._store_commit(wanted)
        return None if asynchronous else done

    def store_offsets(
        self, message: Any = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        """Mark offsets for the next argument-less ``commit`` (message: its offset + 1)."""
        with self._lock:
            self._check_open()
            if message is not None:
                self._stored[(message.topic(), message.partition())] = message.offset() + 1
            elif offsets is not None:
                self._stored.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
            else:
                raise ValueError("expected message or offsets")

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        with self._lock:
            self._check_open()
            group = self.broker._committed.get(self.group_id, {})
            return [
                TopicPartition(
                    tp.topic, tp.partition, group.get((tp.topic, tp.partition), OFFSET_INVALID)
                )
                for tp in partitions
            ]

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the group (``on_revoke`` with the assignment first); again is a no-op."""
        if self._closed:
            return
        with self._lock:
            if self._auto_commit and self._stored:
                self._store_commit(dict(self._stored))
        self._leave_group()
        with self._lock:
            self._assigned.clear()
            self._closed = True
            self._lock.notify_all()

    def __enter__(self) -> InMemoryConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def _refuse_eager_call_when_cooperative(self, what: str) -> None:
        if self._cooperative and self._subscription is not None:
            raise _error(KafkaError._STATE, f"{what}: Local: Erroneous state")

    def _add(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            state = _Partition(None)
            self._start_at(state, tp.offset)
            self._assigned[(tp.topic, tp.partition)] = state

    def _start_at(self, state: _Partition, offset: int) -> None:
        state.position = offset if offset >= 0 else None
        state.start = offset if offset < 0 else OFFSET_STORED
        state.consumed = False
        state.eof_sent = False

    def _resolve(self, key: _Key, state: _Partition, end: int) -> int:
        if state.position is None or state.position > end:
            committed = self.broker._committed.get(self.group_id, {}).get(key)
            if state.position is None and state.start == OFFSET_BEGINNING:
                state.position = 0
            elif state.position is None and state.start == OFFSET_END:
                state.position = end
            elif state.position is None and committed is not None and committed <= end:
                state.position = committed
            else:  # nothing committed, or out of range: auto.offset.reset
                state.position = 0 if self._reset_earliest else end
        return state.position

    def _next_message(self) -> InMemoryMessage | None:
        """One record (or event) from the next partition that has one; lock held."""
        if self._subscription is not None:
            for topic in self._subscription:
                if topic not in self.broker._logs and topic not in self._missing_reported:
                    self._missing_reported.add(topic)
                    err = KafkaError(
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        f"Subscribed topic not available: {topic}: "
                        "Broker: Unknown topic or partition",
                    )
                    return InMemoryMessage(topic, None, None, error=err)
        keys = list(self._assigned)
        for i in range(len(keys)):
            key = keys[(self._rr + i) % len(keys)]
            if key in self._paused:
                continue
            parts = self.broker._logs.get(key[0])
            if parts is None or key[1] >= len(parts):
                continue
            log = parts[key[1]]
            state = self._assigned[key]
            pos = self._resolve(key, state, len(log))
            if pos < len(log):
                self._rr = (self._rr + i + 1) % len(keys)
                state.position, state.consumed, state.eof_sent = pos + 1, True, False
                if self._auto_store:
                    self._stored[key] = pos + 1
                return self.broker._message(key[0], key[1], pos)
            if self._partition_eof and not state.eof_sent:
                state.eof_sent = True
                err = KafkaError(
                    KafkaError._PARTITION_EOF,
                    f"Fetch from broker 0 reached end of partition at offset {pos} "
                    f"(HighwaterMark {len(log)})",
                )
                return InMemoryMessage(key[0], key[1], pos, error=err)
        return None

    def _store_commit(self, offsets: dict[_Key, int]) -> list[TopicPartition]:
        group = self.broker._committed.setdefault(self.group_id, {})
        group.update(offsets)
        for key in offsets:
            self._stored.pop(key, None)
        return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

    def _wanted(self) -> set[_Key]:
        """Every partition of the subscribed topics that exist (a single member gets all)."""
        logs = self.broker._logs
        return {(t, p) for t in self._subscription or () if t in logs for p in range(len(logs[t]))}

    def _needs_rebalance(self) -> bool:
        if self._subscription is None:
            return False
        return (
            self._pending_loss is not None or not self._joined or bool(self._wanted() - self._owned)
        )

    def _next_rebalance(self) -> tuple[str, list[TopicPartition]] | None:
        """The next callback to serve (lock held): a loss, a revoke, or an assignment."""
        if self._subscription is None:
            return None
        if self._pending_loss is not None:
            kind, self._pending_loss = self._pending_loss, None
            self._joined = False
            if self._owned:
                return kind, _tps(self._owned)
        new = self._wanted() - self._owned
        if self._joined and not new:
            return None
        if not self._cooperative and self._owned:
            return "revoke", _tps(self._owned)  # eager: give all back, then take all
        self._joined = True
        return "assign", _tps(new if self._cooperative else self._wanted())

    def _serve_rebalance(self) -> None:
        """Run due rebalance callbacks on this thread, outside the lock (as the driver
        does from poll); do the (incremental) (un)assign a callback leaves undone."""
        while True:
            with self._lock:
                if self._in_rebalance:
                    return
                step = self._next_rebalance()
                if step is None:
                    return
                kind, partitions = step
                self._in_rebalance, self._rebalance_handled = True, False
            try:
                cb = self._callbacks.get(kind) or (
                    self._callbacks.get("revoke") if kind == "lost" else None
                )
                if cb is not None:
                    cb(self, partitions)
            finally:
                with self._lock:  # also when the callback raised (it propagates, as in poll)
                    self._in_rebalance = False
                    keys = {(tp.topic, tp.partition) for tp in partitions}
                    if kind == "assign":
                        self._owned |= keys
                        if not self._rebalance_handled:
                            self._add(partitions)
                    else:
                        self._owned -= keys
                        if not self._rebalance_handled or self._cooperative:
                            for key in keys:
                                self._assigned.pop(key, None)

    def _leave_group(self) -> None:
        with self._lock:
            if self._subscription is None:
                return
            owned = _tps(self._owned)
            revoke = self._callbacks.get("revoke")
            self._subscription = None
        try:
            if owned and revoke is not None:
                revoke(self, owned)
        finally:
            with self._lock:
                self._owned.clear()
                self._assigned.clear()
                self._joined = False
                self._pending_loss = None
                if self.broker._members.get(self.group_id) is self:
                    del self.broker._members[self.group_id]


def _tps(keys: Iterable[_Key]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in sorted(keys)]


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")


__all__ = [
    "MAX_QUEUED",
    "MESSAGE_MAX_BYTES",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryMessage",
    "InMemoryProducer",
    "record_size",
]
