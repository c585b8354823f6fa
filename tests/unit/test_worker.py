"""The blob Worker on the in-memory twins: built as ``bootstrap.worker`` builds it, but on
an :class:`InMemoryBroker` and an :class:`InMemoryBlobStore` (no services, ~1 s a test).

Commands are published as ``Client.attach_blob`` publishes them; outcomes are read back
from the events topic with the codec, as the projector reads them."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.outcomes import WORKER_ACTOR, outcome_event_id
from blobledger.blob_worker.runner import Worker
from blobledger.blob_worker.transfer import Transfer, TransferOptions, content_key
from blobledger.infra.kafka import header_value
from blobledger.infra.memory import (
    MemoryKeys,
    InMemoryBlobStore,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
)
from blobledger.infra.publisher import Publisher
from blobledger.infra.retry import CircuitBreaker
from blobledger.infra.settings import Settings
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import (
    BlobStored,
    BlobUploadFailed,
    Envelope,
    Event,
    UploadRequested,
    new_id,
    now_us,
    object_id_for,
)


class HeldProducer(InMemoryProducer):
    """Records reach the log at once, but no delivery report is served (the broker's
    ack is "in flight") until ``release`` is set."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker)
        self.release = threading.Event()

    def poll(self, timeout: float | None = -1) -> int:
        if not self.release.is_set():
            self.release.wait(0.05 if timeout is None or timeout < 0 else min(timeout, 0.05))
            return 0
        return super().poll(timeout)

    def flush(self, timeout: float | None = -1) -> int:
        self.release.wait(None if timeout is None or timeout < 0 else timeout)
        return super().flush(timeout)


@dataclass
class Rig:
    settings: Settings
    broker: InMemoryBroker
    store: InMemoryBlobStore
    cache: HashCache = field(default_factory=HashCache)
    keys: MemoryKeys = field(default_factory=MemoryKeys)
    codec: Any = field(default_factory=default_codec)

    def worker(self, producer: InMemoryProducer | None = None) -> Worker:
        """A worker wired like ``bootstrap.worker``, on the twins."""
        s = self.settings
        transfer = Transfer(
            self.store,
            TransferOptions.from_settings(s),
            breaker=CircuitBreaker("s3", failure_threshold=5, reset_timeout=5.0),
            hash_cache=self.cache,
        )
        return Worker(
            s,
            consumer=InMemoryConsumer(self.broker, s.worker_group),
            publisher=Publisher(
                s,
                producer=producer or InMemoryProducer(self.broker),
                signer=self.keys.blob_worker,
            ),
            transfer=transfer,
            keyring=self.keys.keyring,
            transfer_attempts=2,
            max_backoff=0.1,
        )

    def run(self, worker: Worker, **kw: Any) -> int:
        try:
            return worker.run(**{"max_commands": 1, "idle_exit": 5.0, **kw})
        finally:
            worker.close()

    def request(self, source: str, key: str = "docs/report.pdf") -> UploadRequested:
        """Publish an upload command the way ``Client.attach_blob`` does."""
        s = self.settings
        env = Envelope(object_id=object_id_for(s.tenant, key), actor="alice", tenant=s.tenant)
        command = UploadRequested(
            env.caused(actor="alice"),
            upload_id=new_id(),
            source=source,
            deadline=now_us() + s.upload_deadline_seconds * 1_000_000,
        )
        publisher = Publisher(s, producer=InMemoryProducer(self.broker), signer=self.keys.operator)
        try:
            publisher.publish(s.commands_topic, command)
        finally:
            publisher.close()
        return command

    def outcomes(self) -> list[Event]:
        return [
            self.codec.decode(m.value()) for m in self.broker.messages(self.settings.events_topic)
        ]

    def partition_of(self, command: UploadRequested) -> int:
        (m,) = [
            m
            for m in self.broker.messages(self.settings.commands_topic)
            if self.codec.decode(m.value()).event_id == command.event_id
        ]
        partition = m.partition()
        assert partition is not None
        return partition

    def committed(self, command: UploadRequested) -> int | None:
        """The worker group's committed offset on the command's partition."""
        return self.broker.committed(
            self.settings.worker_group, self.settings.commands_topic, self.partition_of(command)
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    settings = Settings.from_env(
        {
            "BLOBLEDGER_DATA_DIR": str(tmp_path / "data"),
            "BLOBLEDGER_SOURCE_ROOTS": str(tmp_path),
            "BLOBLEDGER_TOPIC_PREFIX": "unit",
            "BLOBLEDGER_PARTITIONS": "3",
            "BLOBLEDGER_WAIT_TIMEOUT_SECONDS": "10",
        }
    )
    r = Rig(
        settings,
        InMemoryBroker.for_settings(settings),
        InMemoryBlobStore(bucket=settings.s3_bucket),
    )
    yield r
    r.cache.close()


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
