"""Where a topic's partitions end, and how old the first record past a position is.

``status`` needs, per partition, the true end (for lag and the DLQ's size), the low
watermark, and the create time of the first record a consumer has not processed yet (how
long the oldest waiting event has waited). One consumer, assigned (no group join), reads
from each position to the partition-EOF event, which states the real end: Tansu 0.6's
ListOffsets answers the last batch's base offset + 1, not the end (see
``infra.kafka.end_offsets``). A long backlog is skipped with a seek once its first record
is seen, so the cost is a couple of fetches per partition whatever the lag. Everything is
bounded by one deadline, so a slow broker costs ``status`` a second, not a minute.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, TopicPartition

from blobledger.infra.kafka import make_consumer, position_of
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import StackError, TimeoutExpired


@dataclass(frozen=True)
class PartitionHead:
    partition: int
    low: int
    end: int
    #: create time (epoch seconds) of the record at the probed position; None: none there
    first_time: float | None
    #: False when the deadline came before the partition-EOF: ``end`` may be low
    exact: bool = True


def probe_topic(
    settings: Settings,
    topic: str,
    positions: Mapping[int, int] | None = None,
    *,
    timeout: float = 1.5,
) -> dict[int, PartitionHead]:
    """Every partition of ``topic``: its low watermark, true end, and the time of the
    record at ``positions[p]`` (default: the low watermark, the oldest record kept)."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    consumer = make_consumer(
        settings,
        f"{settings.topic_prefix}.status-probe",  # never joins: partitions are assigned
        **{
            "enable.partition.eof": True,
            # a position past the end (a commit ahead of a Tansu end) reads from the end
            "auto.offset.reset": "latest",
            "log_level": 0,
        },
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=left()).topics.get(topic)
        except KafkaException as e:
            raise TimeoutExpired(f"kafka: no metadata for {topic} ({e})") from e
        if meta is None or meta.error is not None or not meta.partitions:
            raise StackError(f"topic {topic} not found", service="kafka")
        lows: dict[int, int] = {}
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left())
            lows[p], ends[p] = low, high
            start = max(low, (positions or {}).get(p, low))
            starts.append(TopicPartition(topic, p, start))
        firsts: dict[int, float | None] = {}
        skipped: set[int] = set()
        waiting = set(lows)
        consumer.assign(starts)
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(1000, min(0.2, left())):
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    continue  # a transient fetch error: the deadline bounds the retries
                pos = position_of(msg)
                if err is not None:  # the partition-EOF event carries the real end
                    ends[pos.partition] = max(ends[pos.partition], pos.offset)
                    waiting.discard(pos.partition)
                    continue
                ends[pos.partition] = max(ends[pos.partition], pos.offset + 1)
                if pos.partition not in firsts:
                    kind, millis = msg.timestamp()
                    known = kind != TIMESTAMP_NOT_AVAILABLE
                    firsts[pos.partition] = millis / 1000.0 if known else None
                if pos.partition not in skipped and ends[pos.partition] - 1 > pos.offset + 1:
                    skipped.add(pos.partition)  # the rest of a backlog: jump to its end
                    consumer.seek(TopicPartition(topic, pos.partition, ends[pos.partition] - 1))
        return {
            p: PartitionHead(p, lows[p], ends[p], firsts.get(p), p not in waiting) for p in lows
        }
    finally:
        consumer.close()
