"""The dead-letter queue: messages that could not be decoded or applied.

Each dead letter keeps the original key and bytes, plus headers that say what went
wrong and where the message came from, so ``blobledger dlq retry`` can put it back once
the cause is fixed (a newer blobledger that knows the schema, say).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Message, TopicPartition

from blobledger.infra.kafka import (
    HeaderList,
    end_offsets,
    header_list,
    header_value,
    make_consumer,
    make_producer,
    position_of,
    translate,
)
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError, TransientError
from blobledger.schemas.ports import LogProducer


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
    size: int


class DeadLetters:
    """Producer side: called by the projector before it commits the batch's checkpoint,
    so a crash can duplicate a dead letter but never lose one."""

    def __init__(self, producer: LogProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.pending = 0

    def send(self, msg: Message, error: BlobledgerError | Exception) -> None:
        code = getattr(error, "code", type(error).__name__)
        headers: HeaderList = header_list(msg.headers())
        headers += [
            ("dlq.error", str(error).encode()),
            ("dlq.error_code", str(code).encode()),
            ("dlq.source_topic", (msg.topic() or "").encode()),
            ("dlq.source_partition", str(msg.partition()).encode()),
            ("dlq.source_offset", str(msg.offset()).encode()),
            ("dlq.failed_at", str(int(time.time() * 1000)).encode()),
        ]
        self.producer.produce(self.topic, key=msg.key(), value=msg.value(), headers=headers)
        self.pending += 1

    def flush(self, timeout: float = 30.0) -> None:
        if self.pending:
            left = self.producer.flush(timeout)
            if left:
                raise TransientError(
                    f"{left} dead letters not acknowledged by the broker; retrying the batch"
                )
            self.pending = 0


# --- reading the DLQ --------------------------------------------------------------------------
def _read_all(settings: Settings, limit: int) -> Iterator[tuple[Message, DeadLetter]]:
    consumer = make_consumer(settings, group_id=f"{settings.projector_group}.dlq-reader")
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
            yield msg, _describe(msg)
    finally:
        consumer.close()


def _describe(msg: Message) -> DeadLetter:
    h = msg.headers()

    def num(name: str) -> int | None:
        v = header_value(h, name)
        return int(v) if v and v.lstrip("-").isdigit() else None

    key = msg.key()
    pos = position_of(msg)
    return DeadLetter(
        offset=pos.offset,
        partition=pos.partition,
        key=key.decode("utf-8", "replace") if key else None,
        error=header_value(h, "dlq.error") or "",
        error_code=header_value(h, "dlq.error_code") or "",
        source_topic=header_value(h, "dlq.source_topic"),
        source_partition=num("dlq.source_partition"),
        source_offset=num("dlq.source_offset"),
        size=len(msg.value() or b""),
    )


def list_dead_letters(settings: Settings, limit: int = 1000) -> list[DeadLetter]:
    return [d for _, d in _read_all(settings, limit)]


def retry_dead_letters(
    settings: Settings, *, offsets: set[tuple[int, int]] | None = None, limit: int = 1000
) -> int:
    """Re-publish dead letters to their source topic (all, or the given (partition,
    offset) pairs). The fold's idempotency makes a retry of something already applied
    harmless; a letter that fails again lands in the DLQ again."""
    producer = make_producer(settings)
    count = 0
    for msg, d in _read_all(settings, limit):
        if offsets is not None and (d.partition, d.offset) not in offsets:
            continue
        headers = [(k, v) for k, v in header_list(msg.headers()) if not k.startswith("dlq.")]
        producer.produce(
            d.source_topic or settings.events_topic,
            key=msg.key(),
            value=msg.value(),
            headers=headers,
        )
        count += 1
    if producer.flush(30):
        raise TransientError("retried dead letters were not all acknowledged; run retry again")
    return count


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobledger dlq", description="Inspect and retry dead letters."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list dead letters")
    ls.add_argument("--limit", type=int, default=1000)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    rt = sub.add_parser("retry", help="re-publish dead letters to their source topic")
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
    if args.cmd == "list":
        letters = list_dead_letters(settings, args.limit)
        for d in letters:
            if args.json:
                print(json.dumps(asdict(d)))
            else:
                print(
                    f"{d.partition}:{d.offset}  {d.error_code:<16} from {d.source_topic}"
                    f"[{d.source_partition}]@{d.source_offset}  key={d.key}  {d.error}"
                )
        if not args.json:
            print(f"{len(letters)} dead letter(s) in {settings.dlq_topic}", file=sys.stderr)
        return 0
    wanted: set[tuple[int, int]] | None = None
    if args.offset:
        try:
            wanted = {(int(p), int(o)) for p, o in (x.split(":", 1) for x in args.offset)}
        except ValueError:
            parser.error("--offset takes PARTITION:OFFSET, e.g. 0:17")
    n = retry_dead_letters(settings, offsets=wanted)
    out: dict[str, Any] = {"retried": n}
    print(json.dumps(out) if args.json else f"re-published {n} dead letter(s)")
    return 0
