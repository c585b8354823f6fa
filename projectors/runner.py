"""The projector: consume the events topic and fold it into the read model.

Offsets live in Postgres (the checkpoints table, written in the view's transaction), not
in Kafka: on assignment the consumer seeks to the stored checkpoint. Several projectors
in one consumer group share the partitions; a rebalance in the middle of a batch is safe
because each batch locks its checkpoint rows and skips what another projector folded.

Each batch is one ``blobledger.fold`` span (a child of its records' trace when they all
belong to one, else linked to each) and, once committed, a handful of metric updates
(infra/metrics.py): batch size and time, outcomes by reason, a sample of command ->
visible latencies, and each owned partition's lag from the consumer's cached watermark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from blobledger.infra import logging as blog
from blobledger.infra import metrics, tracing
from blobledger.infra.dlq import DeadLetters
from blobledger.infra.kafka import position_of, translate
from blobledger.infra.postgres import translate as pg_translate
from blobledger.infra.settings import Settings
from blobledger.projectors.applier import BatchStats, Record, apply_isolating
from blobledger.projectors.ports import ReadModelPort
from blobledger.schemas.auth import Keyring
from blobledger.schemas.codec import Codec, default_codec
from blobledger.schemas.errors import CodecError, TransientError
from blobledger.schemas.ports import LogConsumer

log = blog.get_logger(__name__)


@dataclass
class Totals:
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    stale: int = 0
    dead_letters: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, s: BatchStats, dead: int) -> None:
        self.applied += s.applied
        self.rejected += s.rejected
        self.duplicates += s.duplicates
        self.stale += s.stale
        self.dead_letters += dead
        self.batches += 1

    @property
    def folded(self) -> int:
        return self.applied + self.rejected


class Projector:
    """One projector: a consumer of the events topic, a read model, a DLQ producer.

    It receives them (:func:`blobledger.infra.bootstrap.projector` wires Kafka and
    Postgres; tests pass in-memory twins). ``open_model`` opens a read model and is called
    again when the one in use lost its connection, so a Postgres outage heals itself."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: LogConsumer,
        open_model: Callable[[], ReadModelPort],
        dead_letters: DeadLetters,
        keyring: Keyring,
        codec: Codec | None = None,
        group: str | None = None,
    ) -> None:
        """``group``: the consumer's group id (its lag's label; default the settings')."""
        self.settings = settings
        self.topic = settings.events_topic
        self.group = group or settings.projector_group
        self.codec = codec or default_codec()
        self.open_model = open_model
        # the model's memo keeps folded states between batches (reset on rebalance,
        # checkpoint mismatch and failed batches), so a batch loads only objects it has
        # not seen
        self.model = open_model()
        self.dlq = dead_letters
        self.keyring = keyring
        self.consumer = consumer
        #: partition -> the next offset our consumer will deliver
        self.positions: dict[int, int] = {}
        #: partition -> (checkpoint, first offset delivered) of a gap being re-read
        self._gap_seen: dict[int, tuple[int, int]] = {}
        self.totals = Totals()
        self._assigned = threading.Event()

    # --- assignment: seek to the checkpoints stored in Postgres ----------------------------
    def _on_assign(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        self.model.memo_reset()
        stored = self._stored_checkpoints()
        for tp in partitions:
            offset = stored.get(tp.partition)
            # an explicit 0, not OFFSET_BEGINNING: the logical start is resolved through
            # ListOffsets, which Tansu 0.6 answered past offset 0 after restarts (the chaos
            # run lost the first records of partitions that way). A log whose start really
            # is later (retention) answers out of range, and auto.offset.reset=earliest
            # moves on to it; _gaps() folds over exactly that gap.
            tp.offset = offset if offset is not None else 0
            self.positions[tp.partition] = offset or 0
        consumer.assign(partitions)
        self._assigned.set()
        log.info(
            "partitions assigned",
            partitions=[tp.partition for tp in partitions],
            checkpoints={tp.partition: self.positions[tp.partition] for tp in partitions},
        )

    def _on_revoke(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        self.model.memo_reset()
        for tp in partitions:
            self.positions.pop(tp.partition, None)
            metrics.forget_consumer_lag(self.group, self.topic, tp.partition)
        consumer.unassign()
        log.info("partitions revoked", partitions=[tp.partition for tp in partitions])

    def _stored_checkpoints(self) -> dict[int, int]:
        try:
            with self.model.transaction():
                return self.model.checkpoints(self.topic)
        except psycopg.Error as e:
            raise pg_translate(e) from e

    # --- the loop ----------------------------------------------------------------------------
    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def poll_batch(self, timeout: float = 0.5) -> list[Message]:
        """Wait up to ``timeout`` for the first message, then take whatever else is already
        fetched (consume() alone would wait for a full batch: latency under light load)."""
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        msgs = [first, *self.consumer.consume(self.settings.projector_batch_size - 1, 0)]
        out = []
        failure: KafkaError | None = None
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF and failure is None:
                failure = err
        if failure is not None:
            # The records around an error event are already past the consumer's position:
            # raising here would drop them and the next batch would fold over the gap. So
            # they are folded, and the error (a broker away, say: librdkafka retries on its
            # own) is reported; it only becomes the loop's backoff when nothing came with it.
            if not out or failure.fatal():
                if out:
                    self._rewind_to_positions({position_of(m).partition for m in out})
                raise translate(failure)
            log.warning("consumer error beside fetched records", error=failure.str())
        return out

    def process(self, msgs: list[Message]) -> BatchStats:
        """Decode, dead-letter what cannot be decoded, fold the rest, commit once. A record
        whose write Postgres refuses is isolated by bisection and dead-lettered too (see
        :func:`projectors.applier.apply_isolating`): bad input never wedges the projector."""
        started = time.perf_counter()
        with self._fold_span(msgs) as span:
            stats, records = self._process(msgs)
            if span.is_recording():  # a trace's fold is found by the events it folded
                span.set_attribute(
                    "blobledger.event_ids",
                    [r.event.event_id for r in records if r.event is not None][: tracing.MAX_LINKS],
                )
        metrics.observe_fold_batch(time.perf_counter() - started, len(msgs))
        metrics.record_outcomes(stats.applied, stats.rejected_reasons)
        # envelope time -> committed: what a writer waiting for its outcome sees
        metrics.observe_visible(stats.occurred_at)
        self._report_lag()
        return stats

    @contextmanager
    def _fold_span(self, msgs: list[Message]) -> Iterator[Span]:
        """The batch's span: it continues its records' trace when they carry one (all
        the same; the parent is the newest record's span, e.g. the transfer that published
        a completion), else it starts one linked to each (a batch serves many traces)."""
        links = tracing.links_from(m.headers() for m in msgs)
        traces = {link.context.trace_id for link in links}
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(links[-1].context))
            if len(traces) == 1
            else None
        )
        with tracing.event_span(
            "blobledger.fold",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links if parent is None else (),
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self.topic,
                "messaging.batch.message_count": len(msgs),
            },
        ) as span:
            yield span

    def _report_lag(self) -> None:
        """Each owned partition's lag: the log end the consumer last fetched (cached,
        no request) minus the next offset to fold."""
        for partition, next_offset in list(self.positions.items()):
            try:
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), cached=True
                )
            except KafkaException:  # revoked meanwhile: nothing to say about it
                continue
            if high >= 0:  # negative: nothing fetched from it yet
                metrics.set_consumer_lag(self.group, self.topic, partition, high - next_offset)

    def _process(self, msgs: list[Message]) -> tuple[BatchStats, list[Record]]:
        self.keyring.refresh()  # keys issued or retired since the last batch apply to this one
        try:
            records, by_position, dead = self._decode(msgs)
            # dead letters are acknowledged before the checkpoint moves past them
            self.dlq.flush()
        except BaseException:
            # nothing of the batch is folded: read it again from the checkpoints (a letter
            # the DLQ acknowledged meanwhile is not sent twice, see infra/dlq.py)
            self._rewind_to_positions({position_of(m).partition for m in msgs})
            raise
        gaps = self._gaps(records)
        if gaps:
            records = [r for r in records if r.partition not in gaps]
            self._rewind_to_positions(gaps)

        def dead_letter(rec: Record, error: Exception) -> None:
            log.warning(
                "dead-lettering a message the read model refused",
                event_id=rec.event.event_id if rec.event is not None else None,
                partition=rec.partition,
                offset=rec.offset,
                error=str(error),
            )
            self.dlq.send(by_position[(rec.partition, rec.offset)], error)
            self.dlq.flush()

        try:
            stats = apply_isolating(self.model, self.topic, records, self.positions, dead_letter)
        except BaseException as e:
            # the failing part is not committed (``positions`` covers what is): re-read from
            # there (the consumer has moved past it; without the seek the next batch would be
            # folded over a gap)
            self._rewind_to_positions({r.partition for r in records})
            if isinstance(e, psycopg.Error):
                raise pg_translate(e) from e
            raise
        for partition, offset in stats.rewind.items():
            log.warning("checkpoint moved back; re-reading", partition=partition, offset=offset)
            self.consumer.seek(TopicPartition(self.topic, partition, offset))
        self.totals.add(stats, dead + stats.dead_letters)
        return stats, records

    def _decode(
        self, msgs: list[Message]
    ) -> tuple[list[Record], dict[tuple[int, int], Message], int]:
        """The batch's records, its decoded messages by (partition, offset), and how many
        were dead-lettered (sent, or already in the DLQ) because they do not decode."""
        records: list[Record] = []
        by_position: dict[tuple[int, int], Message] = {}
        dead = 0
        for m in msgs:
            pos = position_of(m)
            value = m.value() or b""
            try:
                event = self.codec.decode(value)
            except CodecError as e:
                log.warning(
                    "dead-lettering undecodable message",
                    partition=pos.partition,
                    offset=pos.offset,
                    size=len(value),
                    error=str(e),
                )
                self.dlq.send(m, e)
                dead += 1
                # still advance the checkpoint past it: a record without an event is not folded
                records.append(Record(pos.topic, pos.partition, pos.offset, None))
                continue
            why = self.keyring.verify_event(value, m.headers(), event)
            if why is not None:
                log.warning(
                    "unauthenticated event: the fold rejects it",
                    event_id=event.event_id,
                    correlation_id=event.envelope.correlation_id,
                    reason=why,
                    actor=event.envelope.actor,
                    partition=pos.partition,
                    offset=pos.offset,
                )
            records.append(Record(pos.topic, pos.partition, pos.offset, event, why))
            by_position[(pos.partition, pos.offset)] = m
        return records, by_position, dead

    def _gaps(self, records: list[Record]) -> set[int]:
        """Partitions whose first record is past the next offset to fold: the consumer
        skipped records (a seek that did not take, say), and folding on would leave them
        out of the read model for good. Their records are dropped from the batch and read
        again from the checkpoint. Offsets our producers write are contiguous (no
        transactions), so the only gap to fold over is one retention left: records below
        the log's start are gone, and the consumer restarts at the start."""
        first: dict[int, int] = {}
        for rec in records:
            first.setdefault(rec.partition, rec.offset)
        gaps = set()
        for partition, offset in first.items():
            expected = self.positions.get(partition)
            if expected is None or offset <= expected:
                continue
            try:
                low, _high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=5.0
                )
            except KafkaException as e:
                raise translate(e) from e
            if expected < low and offset == low:
                log.warning(
                    "records below the log start are gone; folding on from it",
                    partition=partition,
                    missing=f"{expected}..{low - 1}",
                )
                continue
            if self._gap_seen.get(partition) == (expected, offset):
                # read again from the checkpoint and the same record came first: the log
                # itself has a hole there (Tansu can leave one across a restart), so
                # folding on loses nothing that exists; re-reading forever would stall
                log.warning(
                    "no records in the log between the checkpoint and the next record",
                    partition=partition,
                    missing=f"{expected}..{offset - 1}",
                )
                del self._gap_seen[partition]
                continue
            log.error(
                "the consumer skipped records; re-reading from the checkpoint",
                partition=partition,
                expected=expected,
                got=offset,
            )
            self._gap_seen[partition] = (expected, offset)
            gaps.add(partition)
        return gaps

    def _rewind_to_positions(self, partitions: set[int]) -> None:
        for p in partitions:
            if p in self.positions:
                try:
                    self.consumer.seek(TopicPartition(self.topic, p, self.positions[p]))
                except Exception as e:  # e.g. revoked meanwhile: on_assign re-seeks anyway
                    log.warning("could not rewind after a failed batch", partition=p, error=str(e))

    def run(self, stop: threading.Event, *, idle_exit: float | None = None) -> Totals:
        """Fold until ``stop`` is set (or, with ``idle_exit``, until nothing arrived for
        that many seconds). Transient errors are logged and retried with backoff."""
        self.subscribe()
        idle_since = time.monotonic()
        backoff = 0.5
        while not stop.is_set():
            try:
                msgs = self.poll_batch()
                if msgs:
                    self.process(msgs)
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                backoff = 0.5
            except TransientError as e:
                log.warning("transient failure; retrying", error=str(e), backoff=backoff)
                self._reconnect_if_broken()
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return self.totals

    def _reconnect_if_broken(self) -> None:
        if not self.model.broken:
            return
        try:
            self.model.close()
            self.model = self.open_model()
            # our consumer may have moved past what was committed: re-seek
            stored = self._stored_checkpoints()
            for p in list(self.positions):
                offset = stored.get(p, 0)
                self.consumer.seek(TopicPartition(self.topic, p, offset))
                self.positions[p] = offset
        except TransientError as e:
            log.warning("read model still unavailable", error=str(e))

    def close(self) -> None:
        try:
            self.consumer.close()
            self.dlq.flush(5)
        finally:
            self.dlq.close()
            self.model.close()
            # drop the librdkafka handles now, not at interpreter exit (no reconnect noise)
            del self.dlq, self.consumer
