"""The blob Worker on the in-memory twins (:mod:`.worker_support`: built as
``bootstrap.worker`` builds it, no services, ~1 s a test): one command at a time, its
outcome, its commit, and the sources it refuses."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from blobledger.blob_worker.outcomes import WORKER_ACTOR, outcome_event_id
from blobledger.blob_worker.transfer import content_key
from blobledger.infra.kafka import header_value
from blobledger.infra.memory import InMemoryConsumer, InMemoryProducer
from blobledger.schemas.events import BlobStored, BlobUploadFailed

from .worker_support import HeldProducer, Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(tmp_path)


def _file(tmp_path: Path, data: bytes, name: str = "report.pdf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


def test_a_stored_blob_is_announced_with_its_hash_and_its_bytes_are_in_the_store(
    rig: Rig, tmp_path: Path
) -> None:
    data = b"%PDF-1.7 quarterly numbers\n" * 300
    command = rig.request(_file(tmp_path, data))
    assert rig.run(rig.worker()) == 1

    (event,) = rig.outcomes()
    sha = hashlib.sha256(data).hexdigest()
    assert isinstance(event, BlobStored)
    assert (event.upload_id, event.sha256, event.size) == (command.upload_id, sha, len(data))
    assert event.key == content_key(sha) and not event.dedup
    assert event.event_id == outcome_event_id(command.upload_id, "stored")
    env = event.envelope
    assert (env.object_id, env.causation_id, env.actor) == (
        command.object_id,
        command.event_id,
        WORKER_ACTOR,
    )
    assert rig.store.objects[event.key] == data
    # keyed by object id: the outcome lands in the object's partition, behind its events
    (record,) = rig.broker.messages(rig.settings.events_topic)
    assert record.key() == command.object_id.encode()
    assert header_value(record.headers(), "event_type") == "BlobStored"
    progress = rig.broker.messages(rig.settings.progress_topic)
    assert progress and b'"state": "stored"' in (progress[-1].value() or b"")


def test_a_missing_source_is_compensated_with_its_reason(rig: Rig, tmp_path: Path) -> None:
    command = rig.request((tmp_path / "gone.bin").as_uri())
    assert rig.run(rig.worker()) == 1

    (event,) = rig.outcomes()
    assert isinstance(event, BlobUploadFailed)
    assert (event.upload_id, event.reason) == (command.upload_id, "source_not_found")
    assert "gone.bin" in event.detail
    assert event.event_id == outcome_event_id(command.upload_id, "failed")
    assert rig.store.objects == {} and rig.store.uploads == {}
    assert rig.committed(command) is not None  # a compensation ends the command too


def test_a_redelivered_command_is_handled_idempotently(rig: Rig, tmp_path: Path) -> None:
    data = b"the same bytes twice" * 1000
    command = rig.request(_file(tmp_path, data))
    assert rig.run(rig.worker()) == 1
    sent = rig.store.bytes_received
    offset = rig.committed(command)
    assert offset is not None

    # the commit is lost (a crash right after the ack): the group reads the command again
    rewind = InMemoryConsumer(rig.broker, rig.settings.worker_group)
    where = TopicPartition(rig.settings.commands_topic, rig.partition_of(command), offset - 1)
    rewind.commit(offsets=[where], asynchronous=False)
    rewind.close()
    rig.store.calls.clear()
    assert rig.run(rig.worker()) == 1

    first, second = rig.outcomes()
    assert isinstance(first, BlobStored) and isinstance(second, BlobStored)
    assert second.event_id == first.event_id  # the fold applies it once
    assert (second.sha256, second.size, second.key) == (first.sha256, first.size, first.key)
    assert second.dedup and rig.store.bytes_received == sent  # nothing sent again
    assert not {"put_object", "upload_part"} & set(rig.store.calls)
    assert list(rig.store.objects) == [first.key]
    assert rig.committed(command) == offset


def test_the_command_is_committed_only_after_the_outcome_is_acknowledged(
    rig: Rig, tmp_path: Path
) -> None:
    command = rig.request(_file(tmp_path, b"acked first" * 100))
    producer = HeldProducer(rig.broker)
    worker = rig.worker(producer)
    thread = threading.Thread(target=rig.run, args=(worker,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not rig.outcomes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(rig.outcomes()[0], BlobStored)  # produced, not yet acknowledged
        time.sleep(0.3)
        assert rig.committed(command) is None
    finally:
        producer.release.set()
        thread.join(10)
    assert not thread.is_alive() and worker.handled == 1
    assert rig.committed(command) is not None


def test_an_undecodable_command_goes_to_the_dlq_and_is_committed(rig: Rig) -> None:
    producer = InMemoryProducer(rig.broker)
    producer.produce(rig.settings.commands_topic, value=b"not avro", key=b"k")
    assert producer.flush() == 0
    assert rig.run(rig.worker(), idle_exit=1.0) == 0

    (letter,) = rig.broker.messages(rig.settings.dlq_topic)
    assert letter.value() == b"not avro" and letter.key() == b"k"
    assert header_value(letter.headers(), "dlq.source_topic") == rig.settings.commands_topic
    (m,) = rig.broker.messages(rig.settings.commands_topic)
    topic, partition = m.topic(), m.partition()
    assert topic is not None and partition is not None
    assert rig.broker.committed(rig.settings.worker_group, topic, partition) == 1
    assert rig.outcomes() == []


@contextlib.contextmanager
def _socket_file(path: Path) -> Iterator[None]:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    try:
        yield
    finally:
        sock.close()


@pytest.mark.parametrize(
    "kind, shown",
    [("fifo", "a FIFO"), ("socket", "a socket"), ("directory", "a directory")],
)
def test_a_non_regular_file_is_compensated_at_once_and_the_next_command_runs(
    rig: Rig, tmp_path: Path, kind: str, shown: str
) -> None:
    """A FIFO with no writer used to block the worker in open() for good (and every
    command behind it); now it, a socket and a directory are refused before open."""
    path = tmp_path / kind
    holder = contextlib.ExitStack()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        holder.enter_context(_socket_file(path))
    else:
        path.mkdir()
    with holder:
        odd = rig.request(path.as_uri(), key="odd/file")
        fine = rig.request(_file(tmp_path, b"regular bytes" * 50), key="fine/file")
        t0 = time.monotonic()
        assert rig.run(rig.worker(), max_commands=2) == 2
        assert time.monotonic() - t0 < 5
    failed, stored = rig.outcome_of(odd), rig.outcome_of(fine)
    assert isinstance(failed, BlobUploadFailed) and isinstance(stored, BlobStored)
    assert failed.reason == "source_not_regular"
    assert f"is {shown}, not a regular file" in failed.detail
    assert rig.committed(odd) is not None and rig.committed(fine) is not None


def test_a_device_is_compensated_unopened(tmp_path: Path) -> None:
    """/dev/zero is endless: read, it would fill the store; it is refused before open."""
    for rig in make_rig(tmp_path, source_roots=f"{tmp_path}{os.pathsep}/dev"):
        command = rig.request("file:///dev/zero")
        assert rig.run(rig.worker()) == 1
        (event,) = rig.outcomes()
        assert isinstance(event, BlobUploadFailed) and event.upload_id == command.upload_id
        assert event.reason == "source_not_regular" and "a character device" in event.detail
        assert rig.store.calls == []
