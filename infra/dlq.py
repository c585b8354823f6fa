"""The dead-letter queue: messages that could not be decoded or applied.

Each dead letter keeps the original key and bytes, plus headers that say what went
wrong and where the message came from, so ``blobledger dlq retry`` can put it back once
the cause is fixed (a newer blobledger that knows the schema, say).

Three promises, because the projector's checkpoint moves past a record only once it is
folded or its letter is acknowledged:

* every record can be dead-lettered: one too large for the DLQ topic (refused by
  ``produce()`` or by the broker) is kept as a *reference* instead: its source position,
  size, SHA-256 and first KiB; its bytes stay in the source topic;
* a letter that is not acknowledged is sent again, with backoff, and the caller hears of
  it (``flush`` raises :class:`TransientError` once its time is up), never silence;
* a source record is dead-lettered once: the DLQ topic's own headers say which records
  it already holds (:class:`DeadLetterIndex`), so a restarted projector (the letter was
  acknowledged, the checkpoint not yet committed), the next owner of a partition and a
  replay do not add a second letter for it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from blobledger.infra import logging as blog
from blobledger.infra.kafka import (
    HeaderList,
    Headers,
    LogPosition,
    end_offsets,
    fetch_sizes,
    header_list,
    header_value,
    make_consumer,
    make_producer,
    position_of,
    translate,
)
from blobledger.infra.limits import RecordLimits, discover
from blobledger.infra.metrics import record_dead_letter
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError, PermanentError, TransientError
from blobledger.schemas.ports import LogConsumer, LogProducer

log = blog.get_logger(__name__)

#: how much of a record a reference keeps (its value's first bytes, for triage)
HEAD_BYTES = 1024
#: the broker's and librdkafka's ways of saying a record is too large
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


def _source_of(headers: Headers | None) -> LogPosition | None:
    """Where the record a letter stands for came from (None: not a dead letter of ours)."""
    topic = header_value(headers, "dlq.source_topic")
    partition = header_value(headers, "dlq.source_partition")
    offset = header_value(headers, "dlq.source_offset")
    if not topic or partition is None or offset is None:
        return None
    try:
        return LogPosition(topic, int(partition), int(offset))
    except ValueError:
        return None


def _header_bytes(headers: HeaderList) -> int:
    return sum(len(k) + len(v or b"") for k, v in headers)


@dataclass(frozen=True, slots=True)
class _Letter:
    """One letter to send: the whole record, or a reference to it."""

    source: LogPosition
    key: bytes | None
    #: None for a record without a value (kept as it was: a tombstone stays a tombstone)
    value: bytes | None
    headers: HeaderList
    #: the record's own value (a reference is built from it)
    original: bytes
    reference: bool = False

    @classmethod
    def whole(cls, msg: Message, error: BlobledgerError | Exception) -> _Letter:
        source = position_of(msg)
        code = getattr(error, "code", type(error).__name__)
        value = msg.value()
        headers: HeaderList = header_list(msg.headers())
        headers += [
            ("dlq.error", str(error).encode()),
            ("dlq.error_code", str(code).encode()),
            ("dlq.source_topic", source.topic.encode()),
            ("dlq.source_partition", str(source.partition).encode()),
            ("dlq.source_offset", str(source.offset).encode()),
            ("dlq.failed_at", str(int(time.time() * 1000)).encode()),
        ]
        return cls(source, msg.key(), value, headers, value or b"")

    def as_reference(self) -> _Letter:
        """A small letter that says where the record is and what it holds: the source
        position, size and SHA-256, its first KiB as the value, the original key when it
        is small, the original headers while they fit in a KiB, and the first KiB of the
        error."""
        # the error text is cut too: a driver's message may quote the record
        ours = [
            (k, v[:HEAD_BYTES] if k == "dlq.error" and v else v)
            for k, v in self.headers
            if k.startswith("dlq.")
        ]
        theirs: HeaderList = []
        for k, v in self.headers:
            if not k.startswith("dlq.") and _header_bytes([*theirs, (k, v)]) <= HEAD_BYTES:
                theirs.append((k, v))
        headers = [
            *theirs,
            *ours,
            ("dlq.reference", b"the record is larger than the DLQ topic takes"),
            ("dlq.source_size", str(len(self.original)).encode()),
            ("dlq.source_sha256", hashlib.sha256(self.original).hexdigest().encode()),
        ]
        key = self.key if self.key is None or len(self.key) <= HEAD_BYTES else None
        return replace(
            self, key=key, value=self.original[:HEAD_BYTES], headers=headers, reference=True
        )


class DeadLetterIndex:
    """Which source records the DLQ topic holds a letter for, read from the letters'
    ``dlq.source_*`` headers: from the start once, then incrementally. Each
    :meth:`catch_up` re-assigns the partitions at what was read so far, so the fetch goes
    to the broker and its partition-EOF events state the true ends (Tansu's ListOffsets
    understates them, see :func:`infra.kafka.end_offsets`). Between catch-ups nothing is
    assigned: an idle index costs the broker nothing."""

    def __init__(
        self,
        consumer: LogConsumer,
        topic: str,
        partitions: Callable[[], Iterable[int]],
        *,
        timeout: float = 30.0,
    ) -> None:
        """``consumer``: configured with ``enable.partition.eof``, never subscribed;
        ``partitions``: the DLQ topic's partitions now (asked at each catch-up: the topic may
        be created, or grow, meanwhile)."""
        self.consumer = consumer
        self.topic = topic
        self.partitions = partitions
        self.timeout = timeout
        #: partition -> the next offset to read
        self.next: dict[int, int] = {}
        self.known: set[LogPosition] = set()

    def __contains__(self, source: object) -> bool:
        return source in self.known

    def catch_up(self) -> None:
        """Read every letter the DLQ holds now; TransientError when the broker does not let
        us reach the ends in time (the caller then cannot tell and must not send)."""
        for p in self.partitions():
            self.next.setdefault(p, 0)
        if not self.next:
            return
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in self.next.items()])
        try:
            waiting = set(self.next)
            deadline = time.monotonic() + self.timeout
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransientError(
                        f"could not read the DLQ {self.topic} to its end (partitions "
                        f"{sorted(waiting)}); is the broker up?"
                    )
                msg = self.consumer.poll(min(left, 1.0))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise translate(err)
                pos = position_of(msg)
                if err is not None:  # the end, as the fetch response states it
                    self.next[pos.partition] = max(self.next[pos.partition], pos.offset)
                    waiting.discard(pos.partition)
                    continue
                self.next[pos.partition] = pos.offset + 1
                source = _source_of(msg.headers())
                if source is not None:
                    self.known.add(source)
        finally:
            self.consumer.unassign()

    def close(self) -> None:
        self.consumer.close()


class DeadLetters:
    """Producer side, used by the projector, replay and the blob worker: :meth:`send` what
    cannot be folded, then :meth:`flush` before the checkpoint moves past it.

    With an ``index`` a record the DLQ already holds is not sent again (see the module
    docstring); without one, only within this object's lifetime. Delivery reports may
    arrive on another thread (the worker's publisher polls its producer in the background).
    """

    def __init__(
        self,
        producer: LogProducer,
        topic: str,
        *,
        index: DeadLetterIndex | None = None,
        first_backoff: float = 0.5,
        max_backoff: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.index = index
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.clock = clock
        self._lock = threading.Lock()
        #: produced, delivery report outstanding
        self._queued: dict[LogPosition, _Letter] = {}
        #: to produce again, with why the last attempt failed
        self._failed: dict[LogPosition, tuple[_Letter, str]] = {}
        #: acknowledged by the broker through this object
        self._acked: set[LogPosition] = set()
        #: the DLQ refuses even a reference: retrying cannot help
        self._fatal: PermanentError | None = None
        #: the index was caught up since the last flush (once per batch of sends is enough:
        #: a partition's records are sent by its one owner)
        self._fresh = False

    @property
    def pending(self) -> int:
        """Letters sent and not yet acknowledged."""
        with self._lock:
            return len(self._queued) + len(self._failed)

    def holds(self, source: LogPosition) -> bool:
        """True when the DLQ is known to hold a letter for ``source``."""
        with self._lock:
            if source in self._acked:
                return True
        return self.index is not None and source in self.index

    def send(self, msg: Message, error: BlobledgerError | Exception) -> bool:
        """Queue a letter for ``msg`` (acknowledged by :meth:`flush`); False when the DLQ
        already holds one for that source record (or one is on its way)."""
        source = position_of(msg)
        with self._lock:
            if source in self._queued or source in self._failed:
                return False
        if self.index is not None and not self._fresh:
            self.index.catch_up()
            self._fresh = True
        if self.holds(source):
            log.info(
                "already dead-lettered; not again",
                topic=source.topic,
                partition=source.partition,
                offset=source.offset,
            )
            return False
        self._produce(_Letter.whole(msg, error))
        return True

    def _produce(self, letter: _Letter) -> None:
        with self._lock:  # before produce(): its report may arrive on another thread at once
            self._queued[letter.source] = letter
        try:
            self.producer.produce(
                self.topic,
                key=letter.key,
                value=letter.value,
                headers=letter.headers,
                on_delivery=functools.partial(self._delivered, letter),
            )
        except KafkaException as e:
            err = e.args[0] if e.args else None
            too_large = isinstance(err, KafkaError) and err.code() in _TOO_LARGE
            with self._lock:
                self._queued.pop(letter.source, None)
            if too_large and not letter.reference:
                self._log_reference(letter, len(letter.value or b""))
                self._produce(letter.as_reference())
            elif too_large:
                raise self._refused_reference(letter, str(e)) from e
            else:
                self._fail(letter, str(translate(e)))
        except BufferError as e:  # the producer's queue is full: flush() sends it again
            with self._lock:
                self._queued.pop(letter.source, None)
            self._fail(letter, f"producer queue full: {e}")

    def _delivered(self, letter: _Letter, err: KafkaError | None, _msg: object) -> None:
        with self._lock:
            if self._queued.get(letter.source) is not letter:
                return
            del self._queued[letter.source]
            if err is None:
                self._acked.add(letter.source)
        if err is None:
            record_dead_letter(header_value(letter.headers, "dlq.error_code") or "other")
            return
        if err.code() in _TOO_LARGE and not letter.reference:
            # the broker's limit is lower than the producer's: send the reference instead
            self._log_reference(letter, len(letter.value or b""))
            with self._lock:
                self._failed[letter.source] = (letter.as_reference(), "")
        elif err.code() in _TOO_LARGE:
            with self._lock:
                self._fatal = self._refused_reference(letter, err.str())
        else:
            self._fail(letter, err.str())

    def _fail(self, letter: _Letter, why: str) -> None:
        log.warning(
            "dead letter not acknowledged; it will be sent again",
            topic=letter.source.topic,
            partition=letter.source.partition,
            offset=letter.source.offset,
            error=why,
        )
        with self._lock:
            self._failed[letter.source] = (letter, why)

    def _log_reference(self, letter: _Letter, size: int) -> None:
        log.warning(
            "record too large for the DLQ; dead-lettering a reference to it",
            topic=letter.source.topic,
            partition=letter.source.partition,
            offset=letter.source.offset,
            size=size,
        )

    def _refused_reference(self, letter: _Letter, why: str) -> PermanentError:
        return PermanentError(
            f"the DLQ topic {self.topic} refuses even a {len(letter.value or b'')}-byte "
            "reference to "
            f"{letter.source.topic}[{letter.source.partition}]@{letter.source.offset} ({why}); "
            "raise its max.message.bytes"
        )

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every letter sent is acknowledged by the broker. A letter whose
        delivery failed is sent again, with backoff (first checking the index: a letter
        can be written although its report says it failed); after ``timeout`` seconds
        TransientError, and the letters stay queued for the next flush."""
        deadline = self.clock() + timeout
        backoff = self.first_backoff
        while True:
            self.producer.flush(max(0.0, deadline - self.clock()))
            with self._lock:
                fatal, queued = self._fatal, len(self._queued)
                failed = dict(self._failed)
            if fatal is not None:
                raise fatal
            if not failed and not queued:
                self._fresh = False
                return
            # a reference that replaces a letter the broker refused as too large goes at once;
            # the others failed for a reason that may pass (a broker away): after a backoff
            why = next((w for _, w in failed.values() if w), None)
            if why is not None:
                if self.clock() + backoff > deadline:
                    raise TransientError(
                        f"{len(failed)} dead letter(s) not acknowledged by the broker ({why}); "
                        "the checkpoint stays before them"
                    )
                log.warning(
                    "dead letters not acknowledged; sending them again",
                    count=len(failed),
                    error=why,
                    backoff=backoff,
                )
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                if self.index is not None:
                    self.index.catch_up()
            elif queued and self.clock() >= deadline:
                raise TransientError(
                    f"{queued} dead letter(s) not acknowledged by the broker in {timeout}s; "
                    "the checkpoint stays before them"
                )
            for source, (letter, _) in failed.items():
                with self._lock:
                    self._failed.pop(source, None)
                if not self.holds(source):
                    self._produce(letter)

    def close(self) -> None:
        """Close the index's consumer (the producer may be shared: its owner closes it)."""
        if self.index is not None:
            self.index.close()


def open_dead_letters(
    settings: Settings, limits: RecordLimits | None = None, *, producer: LogProducer | None = None
) -> DeadLetters:
    """The projector's, replay's and worker's DLQ: a producer sized to the DLQ topic (or
    ``producer``, one that is already) and an index of what it holds."""
    limits = limits or discover(settings)
    topic = settings.dlq_topic
    if producer is None:
        producer = make_producer(settings, max_record_bytes=limits.of(topic).max_bytes)
    consumer = make_consumer(
        settings,
        f"{settings.projector_group}.dlq-index",
        **fetch_sizes(limits.fetch(topic)),
        **{"enable.partition.eof": True},
    )

    def partitions() -> list[int]:
        try:
            t = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            raise translate(e) from e
        # a missing topic holds no letters; the first one sent creates it
        return [] if t is None or t.error is not None else sorted(t.partitions)

    return DeadLetters(producer, topic, index=DeadLetterIndex(consumer, topic, partitions))


# --- reading the DLQ --------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    offset: int
    partition: int
    key: str | None
    error: str
    error_code: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    #: of the dead-lettered record's value (for a reference: of the record it points at)
    size: int
    sha256: str
    #: True: the record was too large for the DLQ; this letter holds only its first KiB
    #: and its bytes are still in the source topic at source_offset
    reference: bool = False

    def refusal(self) -> str:
        """Why ``dlq retry`` does not re-publish this reference, and where the bytes are."""
        return (
            f"dead letter {self.partition}:{self.offset} is a reference, not a copy: the "
            f"record ({self.size} bytes, sha256 {self.sha256}) was too large for the DLQ. "
            f"Its bytes are still in {self.source_topic} partition {self.source_partition} "
            f"at offset {self.source_offset} (while the topic's retention keeps them); "
            "re-publish it from there once the cause is fixed"
        )


def _read_all(
    settings: Settings, limit: int, limits: RecordLimits | None = None
) -> Iterator[tuple[Message, DeadLetter]]:
    limits = limits or discover(settings, [settings.dlq_topic])
    consumer = make_consumer(
        settings,
        f"{settings.projector_group}.dlq-reader",
        **fetch_sizes(limits.fetch(settings.dlq_topic)),
    )
    try:
        ends: dict[int, int] = {}
        assign = []
        for p, high in end_offsets(settings, settings.dlq_topic).items():
            low, _ = consumer.get_watermark_offsets(
                TopicPartition(settings.dlq_topic, p), timeout=10
            )
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(settings.dlq_topic, p, low))
        if not assign:
            return
        consumer.assign(assign)
        seen = 0
        while ends and seen < limit:
            msg = consumer.poll(5.0)
            if msg is None:
                break
            err = msg.error()
            if err is not None:
                raise translate(err)
            pos = position_of(msg)
            if pos.offset + 1 >= ends.get(pos.partition, 0):
                ends.pop(pos.partition, None)
            seen += 1
            yield msg, describe_letter(msg)
    finally:
        consumer.close()


def describe_letter(msg: Message) -> DeadLetter:
    """What a DLQ record says about the record it stands for."""
    h = msg.headers()

    def num(name: str) -> int | None:
        v = header_value(h, name)
        return int(v) if v and v.lstrip("-").isdigit() else None

    key = msg.key()
    pos = position_of(msg)
    value = msg.value() or b""
    reference = header_value(h, "dlq.reference") is not None
    return DeadLetter(
        offset=pos.offset,
        partition=pos.partition,
        key=key.decode("utf-8", "replace") if key else None,
        error=header_value(h, "dlq.error") or "",
        error_code=header_value(h, "dlq.error_code") or "",
        source_topic=header_value(h, "dlq.source_topic"),
        source_partition=num("dlq.source_partition"),
        source_offset=num("dlq.source_offset"),
        size=(num("dlq.source_size") or 0) if reference else len(value),
        sha256=(header_value(h, "dlq.source_sha256") or "")
        if reference
        else hashlib.sha256(value).hexdigest(),
        reference=reference,
    )


def list_dead_letters(settings: Settings, limit: int = 1000) -> list[DeadLetter]:
    return [d for _, d in _read_all(settings, limit)]


def retry_dead_letters(
    settings: Settings,
    *,
    offsets: set[tuple[int, int]] | None = None,
    limit: int = 1000,
    refused: list[DeadLetter] | None = None,
) -> int:
    """Re-publish dead letters to their source topic (all, or the given (partition,
    offset) pairs); returns how many. The fold's idempotency makes a retry of something
    already applied harmless; a letter that fails again lands in the DLQ again.

    A reference is never re-published (it holds only the record's first KiB): it is
    appended to ``refused`` instead, and :meth:`DeadLetter.refusal` says where its bytes
    are."""
    limits = discover(settings)
    producer: LogProducer | None = None
    count = 0
    for msg, d in _read_all(settings, limit, limits):
        if offsets is not None and (d.partition, d.offset) not in offsets:
            continue
        if d.reference:
            log.warning("not retrying a reference", letter=f"{d.partition}:{d.offset}")
            if refused is not None:
                refused.append(d)
            continue
        topic = d.source_topic or settings.events_topic
        if producer is None:
            biggest = max(limits.of(t).max_bytes for t in settings.topics)
            producer = make_producer(settings, max_record_bytes=biggest)
        headers = [(k, v) for k, v in header_list(msg.headers()) if not k.startswith("dlq.")]
        producer.produce(topic, key=msg.key(), value=msg.value(), headers=headers)
        count += 1
    if producer is not None and producer.flush(30):
        raise TransientError("retried dead letters were not all acknowledged; run retry again")
    return count


def _print_letter(d: DeadLetter) -> None:
    kind = (
        f"REFERENCE to {d.size} bytes, sha256 {d.sha256} (bytes still in the source topic)"
        if d.reference
        else f"{d.size} bytes"
    )
    print(
        f"{d.partition}:{d.offset}  {d.error_code:<16} from {d.source_topic}"
        f"[{d.source_partition}]@{d.source_offset}  key={d.key}  {kind}  {d.error}"
    )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobledger dlq", description="Inspect and retry dead letters."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list dead letters")
    ls.add_argument("--limit", type=int, default=1000)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    rt = sub.add_parser(
        "retry",
        help="re-publish dead letters to their source topic (references are refused: "
        "their bytes are still in the source topic)",
    )
    rt.add_argument(
        "--offset",
        action="append",
        default=[],
        metavar="PARTITION:OFFSET",
        help="retry only these (repeatable); default: all",
    )
    rt.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = settings or Settings.from_env()
    from blobledger.infra.topics import require_broker

    require_broker(settings)  # a broker that does not answer: one line within seconds
    if args.cmd == "list":
        letters = list_dead_letters(settings, args.limit)
        for d in letters:
            if args.json:
                print(json.dumps(asdict(d)))
            else:
                _print_letter(d)
        if not args.json:
            print(f"{len(letters)} dead letter(s) in {settings.dlq_topic}", file=sys.stderr)
        return 0
    wanted: set[tuple[int, int]] | None = None
    if args.offset:
        try:
            wanted = {(int(p), int(o)) for p, o in (x.split(":", 1) for x in args.offset)}
        except ValueError:
            parser.error("--offset takes PARTITION:OFFSET, e.g. 0:17")
    refused: list[DeadLetter] = []
    n = retry_dead_letters(settings, offsets=wanted, refused=refused)
    for d in refused:
        print(f"refused: {d.refusal()}", file=sys.stderr)
    out: dict[str, Any] = {
        "retried": n,
        "refused": [f"{d.partition}:{d.offset}" for d in refused],
    }
    print(json.dumps(out) if args.json else f"re-published {n} dead letter(s)")
    return 1 if refused else 0


__all__ = [
    "HEAD_BYTES",
    "DeadLetter",
    "DeadLetterIndex",
    "DeadLetters",
    "describe_letter",
    "list_dead_letters",
    "main",
    "open_dead_letters",
    "retry_dead_letters",
]
