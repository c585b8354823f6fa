"""One process folding the events topic into a rebuild schema, from its checkpoints up to
given end offsets: the sequential fold of a replay, each worker of a parallel one
(projectors/parallel_fold.py) and the catch-up under the swap lock (projectors/rebuild.py).

It folds with the live projector's code (projectors/applier.py), so both produce the same
tables; undecodable records and records the read model refuses are dead-lettered, once:
those the live projector (or an earlier replay) already sent to the DLQ are not sent again
(infra/dlq.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from blobledger.infra.dlq import open_dead_letters
from blobledger.infra.kafka import end_offsets, fetch_sizes, make_consumer, translate
from blobledger.infra.keys import keyring
from blobledger.infra.limits import RecordLimits, discover
from blobledger.infra.postgres import connect, translated
from blobledger.infra.settings import Settings
from blobledger.projectors.applier import Record, apply_isolating
from blobledger.projectors.readmodel import ReadModel
from blobledger.schemas.codec import Codec, default_codec
from blobledger.schemas.errors import CodecError, StackError


class Rebuilder:
    """Reads the events topic from the beginning and folds it into ``target`` schema."""

    def __init__(
        self,
        settings: Settings,
        target: str,
        *,
        codec: Codec | None = None,
        batch_size: int = 20000,
        partitions: Iterable[int] | None = None,
        defer_blobs: bool = False,
        limits: RecordLimits | None = None,
    ) -> None:
        """``partitions``: fold only these (a worker of a parallel rebuild); ``defer_blobs``:
        collect blob rows instead of writing them (see :class:`ReadModel`); ``limits``: the
        topics' record size limits (asked of the broker when not given)."""
        self.settings = settings
        self.only = None if partitions is None else sorted(partitions)
        self.defer_blobs = defer_blobs
        self.topic = settings.events_topic
        self.target = target
        self.codec = codec or default_codec()
        self.batch_size = batch_size
        self.conn = connect(settings, synchronous_commit=settings.projector_synchronous_commit)
        self.model = ReadModel(self.conn, target, memo=True, defer_blobs=defer_blobs)
        limits = limits or discover(settings)
        self.dlq = open_dead_letters(settings, limits)
        # the same keys as the live projector: a replay gives the same outcomes
        self.keyring = keyring(settings)
        # a throwaway group: replay assigns partitions itself and never commits offsets
        self.consumer: Consumer = make_consumer(
            settings,
            f"{settings.projector_group}.replay.{int(time.time() * 1000)}",
            **fetch_sizes(limits.fetch(self.topic)),
            **{"enable.partition.eof": True, "fetch.wait.max.ms": 100},
        )
        self.next: dict[int, int] = {}
        self.events = 0
        #: records not folded because they are dead letters (sent now, or before)
        self.dead = 0
        #: of which this rebuild sent to the DLQ (the others were there already)
        self.dead_sent = 0

    def partitions(self) -> list[int]:
        md = self.consumer.list_topics(self.topic, timeout=10)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None:
            raise StackError(
                f"topic {self.topic} not found; is this the right broker and prefix?",
                service="kafka",
            )
        return sorted(t.partitions)

    def high_watermarks(self) -> dict[int, int]:
        return end_offsets(self.settings, self.topic)

    def start(self) -> None:
        parts = self.only if self.only is not None else self.partitions()
        stored = self.model.checkpoints(self.topic, partitions=parts)
        self.conn.commit()
        if not stored:
            # a fresh private schema (or our disjoint share of it: partitions own their
            # objects) that only we write: fold from memory, no lookups
            self.model = ReadModel(
                self.conn, self.target, complete=True, defer_blobs=self.defer_blobs
            )
        self.next = {p: stored.get(p, 0) for p in parts}
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in self.next.items()])

    def fold_until(
        self, targets: dict[int, int], progress: Callable[[int], None] | None = None
    ) -> None:
        """Fold every record below ``targets[partition]``; records at or past it are left
        for later (the consumer is re-positioned so nothing is skipped)."""
        remaining = {p for p, t in targets.items() if self.next.get(p, 0) < t}
        paused: set[int] = set()
        while remaining:
            msgs = self.consumer.consume(self.batch_size, 1.0)
            self.keyring.refresh()
            records: list[Record] = []
            by_position: dict[tuple[int, int], Message] = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # the end: offsets left below the target were transaction markers
                        p, off = _position(m)
                        if p in remaining and off >= targets[p]:
                            self.next[p] = max(self.next.get(p, 0), targets[p])
                        continue
                    raise translate(err)
                p, off = _position(m)
                if p not in remaining or off >= targets[p]:
                    if p not in paused:
                        # went past the target: rewind to it and stop reading this partition
                        self.consumer.pause([TopicPartition(self.topic, p)])
                        self.consumer.seek(
                            TopicPartition(
                                self.topic, p, max(self.next.get(p, 0), targets.get(p, 0))
                            )
                        )
                        paused.add(p)
                    continue
                value = m.value() or b""
                try:
                    decoded = self.codec.decode(value)
                except CodecError as e:
                    self.dead_sent += self.dlq.send(m, e)
                    self.dead += 1
                    records.append(Record(self.topic, p, off, None))
                else:
                    why = self.keyring.verify_event(value, m.headers(), decoded)
                    records.append(Record(self.topic, p, off, decoded, why))
                by_position[(p, off)] = m
            if records:
                self.dlq.flush()
                dead_letter = functools.partial(self._dead_letter, by_position)
                with translated():
                    stats = apply_isolating(self.model, self.topic, records, None, dead_letter)
                self.events += stats.applied + stats.rejected + stats.duplicates
                for r in records:
                    self.next[r.partition] = r.offset + 1
            for p in list(remaining):
                if self.next.get(p, 0) >= targets[p]:
                    remaining.discard(p)
            if progress:
                progress(self.events)
        if paused:
            self.consumer.resume([TopicPartition(self.topic, p) for p in paused])

    def _dead_letter(
        self, by_position: dict[tuple[int, int], Message], rec: Record, error: Exception
    ) -> None:
        """A record the read model refused: to the DLQ (durably) before its checkpoint moves."""
        self.dead_sent += self.dlq.send(by_position[(rec.partition, rec.offset)], error)
        self.dlq.flush()
        self.dead += 1

    def close(self) -> None:
        try:
            self.consumer.close()
            self.dlq.close()
        finally:
            self.conn.close()


def _position(m: Message) -> tuple[int, int]:
    """Partition and offset of a record or partition-EOF event (librdkafka sets both)."""
    p, off = m.partition(), m.offset()
    assert p is not None and off is not None
    return p, off
