"""One trace from a client's command through the log, the fold, the blob worker's transfer
and the completion's fold, on the real broker and stores; and a worker restarted after
dead-lettering a command does not dead-letter it again (the DLQ index)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import TopicPartition
from opentelemetry.sdk.trace import ReadableSpan

from blobledger import connect
from blobledger.blob_worker.outcomes import outcome_event_id
from blobledger.infra.dlq import list_dead_letters
from blobledger.infra.kafka import LogPosition, make_consumer, make_producer, position_of
from blobledger.infra.testing.services import ThreadedProjector, ThreadedWorker
from blobledger.infra.testing.tracing import recorded_spans

from .blob_support import MiB, make_file, wait_terminal

pytestmark = pytest.mark.integration


def _folded(span: ReadableSpan) -> tuple[str, ...]:
    return tuple(span.attributes.get("blobledger.event_ids", ()))


def test_one_trace_from_the_command_to_the_completions_fold(settings, tmp_path):
    s = settings.with_(min_part_size=5 * MiB)
    path = tmp_path / "traced.bin"
    make_file(path, 11 * MiB)  # three parts
    with recorded_spans() as exporter:
        with ThreadedProjector(s), ThreadedWorker(s), connect(s, actor="alice") as alice:
            alice.create("traced/one")
            attached = alice.attach_blob("traced/one", str(path))
            assert wait_terminal(alice, attached.upload_id).state == "stored"
        # the threads are stopped: every span they started has ended
        spans = exporter.get_finished_spans()

    (command,) = [
        sp
        for sp in spans
        if sp.name == "blobledger.command"
        and sp.attributes.get("blobledger.upload_id") == attached.upload_id
    ]
    trace_id = command.context.trace_id
    mine = [sp for sp in spans if sp.context.trace_id == trace_id]

    (transfer,) = [sp for sp in mine if sp.name == "blobledger.transfer"]
    assert transfer.parent is not None
    assert transfer.parent.span_id == command.context.span_id
    assert transfer.attributes["blobledger.upload_id"] == attached.upload_id
    parts = [sp for sp in mine if sp.name == "blobledger.upload_part"]
    assert sorted(p.attributes["blobledger.part_number"] for p in parts) == [1, 2, 3]
    assert {p.parent.span_id for p in parts} == {transfer.context.span_id}

    folds = [sp for sp in mine if sp.name == "blobledger.fold"]
    folded = {event_id for sp in folds for event_id in _folded(sp)}
    completion = outcome_event_id(attached.upload_id, "stored")
    assert {attached.event_id, completion} <= folded
    # the completion's fold continues the transfer that published the completion
    (completion_fold,) = [sp for sp in folds if completion in _folded(sp)]
    assert completion_fold.parent is not None
    assert completion_fold.parent.span_id == transfer.context.span_id


def test_a_restarted_worker_does_not_dead_letter_a_command_again(settings):
    delivered: list[LogPosition] = []
    producer = make_producer(settings)
    producer.produce(
        settings.commands_topic,
        key=b"garbage",
        value=b"not an upload command",
        on_delivery=lambda err, msg: delivered.append(position_of(msg)),
    )
    assert producer.flush(10) == 0
    (bad,) = delivered

    def letters() -> int:
        return sum(1 for d in list_dead_letters(settings) if d.source_topic == bad.topic)

    def committed(group: str) -> int:
        consumer = make_consumer(settings, group)
        try:
            (tp,) = consumer.committed([TopicPartition(bad.topic, bad.partition)], timeout=10)
            return tp.offset
        finally:
            consumer.close()

    def wait(what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)

    with ThreadedWorker(settings):
        wait("the letter", lambda: letters() == 1)
    # a worker of a group with no committed offset (as after a crash between the letter's
    # ack and the commit) reads the command again, and moves past it without a letter
    again = settings.with_(worker_group=settings.worker_group + ".restarted")
    with ThreadedWorker(again):
        wait("the command to be handled again", lambda: committed(again.worker_group) > bad.offset)
    assert letters() == 1
