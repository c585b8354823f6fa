"""The real Client and Projector wired as ``infra.bootstrap`` wires them, but on in-memory
twins: an :class:`InMemoryBroker` for the log, an :class:`InMemoryReadModel` for Postgres
(with :class:`InMemoryQueries` and :class:`InMemoryOutcomes` as the read side) and an
:class:`InMemoryBlobStore` for S3. No services: a unit test of the write path runs in
milliseconds and still goes through the codec, the publisher, the fold and the DLQ.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from blobledger.infra.dlq import DeadLetters
from blobledger.infra.memory import (
    MemoryKeys,
    InMemoryBlobStore,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryMessage,
    InMemoryProducer,
)
from blobledger.infra.publisher import Publisher
from blobledger.infra.settings import Settings
from blobledger.producers.client import Client
from blobledger.projectors.applier import BatchStats
from blobledger.projectors.memory import InMemoryOutcomes, InMemoryQueries, InMemoryReadModel
from blobledger.projectors.runner import Projector
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import Event


def unit_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings from a plain dict (never the process env), with a private data dir."""
    return Settings.from_env(
        {
            "BLOBLEDGER_DATA_DIR": str(tmp_path),
            "BLOBLEDGER_PARTITIONS": "3",
            "BLOBLEDGER_WAIT_TIMEOUT_SECONDS": "10",
            **{f"BLOBLEDGER_{k.upper()}": v for k, v in env.items()},
        }
    )


class RecordingProducer(InMemoryProducer):
    """Remembers the topic of every record in the order it was produced (across topics,
    which the broker's per-partition offsets cannot tell)."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker)
        self.topics: list[str] = []

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.topics.append(topic)
        super().produce(topic, *args, **kwargs)


class Twins:
    """One broker, one read model, one projector folding the first into the second; any
    number of clients. The projector runs on demand (:meth:`fold`) or in a background
    thread (:meth:`start`, :meth:`held`), as a deployed one does next to the clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = default_codec()
        self.broker = InMemoryBroker.for_settings(settings)
        self.model = InMemoryReadModel()
        self.producer = RecordingProducer(self.broker)
        self.blob_store = InMemoryBlobStore(bucket=settings.s3_bucket)
        self.keys = MemoryKeys()
        self.projector = self.new_projector()
        self._clients: list[Client] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._hold = threading.Event()
        #: held by the background projector for one poll-and-fold
        self._turn = threading.Lock()
        self._failure: BaseException | None = None

    # --- wiring ----------------------------------------------------------------------------------
    def new_projector(self) -> Projector:
        """A projector as ``bootstrap.projector`` builds it (an eager assignment strategy,
        so its ``on_assign`` may seek), over this twin's broker and model."""
        projector = Projector(
            self.settings,
            consumer=InMemoryConsumer(
                self.broker,
                self.settings.projector_group,
                config={"partition.assignment.strategy": "roundrobin"},
            ),
            open_model=lambda: self.model,
            dead_letters=DeadLetters(InMemoryProducer(self.broker), self.settings.dlq_topic),
            keyring=self.keys.keyring,
        )
        projector.subscribe()
        return projector

    def restart_projector(self) -> Projector:
        """Close the projector and start another on the same model (a process restart)."""
        self.projector.close()
        self.projector = self.new_projector()
        return self.projector

    def client(self, actor: str, tenant: str | None = None) -> Client:
        c = Client(
            self.settings,
            actor=actor,
            tenant=tenant,
            key=self.keys.operator,
            publisher=Publisher(self.settings, producer=self.producer, signer=self.keys.operator),
            outcomes=InMemoryOutcomes(self.model, self.settings),
            queries=InMemoryQueries(self.model, tenant or self.settings.tenant),
            blob_store=lambda: self.blob_store,
        )
        self._clients.append(c)
        return c

    # --- folding ---------------------------------------------------------------------------------
    def fold(self) -> BatchStats:
        """Fold everything the events topic holds now, on this thread (not while the
        background projector runs). Records the codec refused count in
        ``projector.totals``, not here."""
        total = BatchStats()
        while msgs := self.projector.poll_batch(0):
            s = self.projector.process(msgs)
            total.applied += s.applied
            total.rejected += s.rejected
            total.duplicates += s.duplicates
            total.stale += s.stale
            total.dead_letters += s.dead_letters
        return total

    def start(self) -> None:
        """Fold in a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="twin-projector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._hold.is_set():
                    self._stop.wait(0.005)
                    continue
                with self._turn:
                    if self._hold.is_set():
                        continue
                    msgs = self.projector.poll_batch(0.02)
                    if msgs:
                        self.projector.process(msgs)
        except BaseException as e:  # surfaced by close(): a test must not pass over it
            self._failure = e

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep the background projector from folding anything new inside the block (the
        batch it is folding, if any, commits first)."""
        self._hold.set()
        try:
            with self._turn:  # the fold in progress ends; no new one starts while held
                pass
            yield
        finally:
            self._hold.clear()

    # --- looking at the log ----------------------------------------------------------------------
    def messages(self, topic: str) -> list[InMemoryMessage]:
        return self.broker.messages(topic)

    def events(self, topic: str | None = None) -> list[Event]:
        """The decoded events of a topic (default: the events topic), by partition and offset."""
        return [
            self.codec.decode(m.value() or b"")
            for m in self.messages(topic or self.settings.events_topic)
        ]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for c in self._clients:
            c.close()
        self.projector.close()
        if self._failure is not None:
            raise AssertionError("the twin projector failed") from self._failure
