"""The mixed load of a chaos run: client threads that write through the Python Client and
write down what the client told them, command by command.

Each thread has its own :class:`~blobledger.producers.client.Client` whose publisher is
wrapped to remember the last event it tried to publish and whether the broker acked it,
so even a command that failed with a timeout is known by its event id. What a thread
records is exactly what its caller could know:

* ``accepted`` / ``rejected``: the outcome was read back (with reason and version);
* ``refused``: the client raised before publishing anything (validation, its ACL check);
* ``unknown_publish``: publishing failed or timed out; the event may still land;
* ``unknown_outcome``: the event is in the log, but no outcome reached the client.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blobledger import connect
from blobledger.infra.settings import Settings
from blobledger.producers.client import Client, Result
from blobledger.schemas.errors import (
    BlobledgerError,
    ConflictError,
    DomainError,
    RejectedError,
)
from blobledger.schemas.events import Event
from blobledger.schemas.receipts import Receipt

from .sources import FAILING, Catalog, Source

#: consecutive infrastructure failures after which a thread replaces its client (and
#: counts it): what an application would do with a client that keeps failing
RECONNECT_AFTER = 5


@dataclass
class Record:
    actor: str
    op: str  # create | update | tag | acl | delete | attach
    key: str
    status: str = ""
    event_id: str | None = None
    reason: str | None = None  # the rejection reason, or the error's code
    version: int | None = None
    upload_id: str | None = None
    source: Source | None = None
    #: the exception was not a BlobledgerError: a driver error leaked through the client
    untranslated: str = ""
    began: float = 0.0
    seconds: float = 0.0


class Ledger:
    """Every command of every thread, in the order they finished."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.reconnects = 0
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def add(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    def reconnected(self) -> None:
        with self._lock:
            self.reconnects += 1


class RecordingPublisher:
    """Delegates to the client's publisher; remembers the last event-topic publish."""

    def __init__(self, inner: Any, events_topic: str) -> None:
        self.inner = inner
        self.events_topic = events_topic
        self.event: Event | None = None
        self.receipt: Receipt | None = None

    def reset(self) -> None:
        self.event, self.receipt = None, None

    def publish(self, topic: str, event: Event, **kwargs: Any) -> Receipt:
        if topic == self.events_topic:
            self.event = event
        receipt = self.inner.publish(topic, event, **kwargs)
        if topic == self.events_topic:
            self.receipt = receipt
        return receipt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _rejection(e: DomainError) -> tuple[str, int | None]:
    """The fold's reason behind an error ``Client.wait`` raised: the errors' codes are the
    fold's reasons (conflict, forbidden, not_found, deleted), others carry it."""
    if isinstance(e, ConflictError):
        return "conflict", e.current_version
    if isinstance(e, RejectedError):
        return e.reason, None
    return e.code, None


class Actor(threading.Thread):
    """One client thread: ``step`` issues one command through :meth:`command`."""

    def __init__(
        self, name: str, settings: Settings, ledger: Ledger, seed: int, stop: threading.Event
    ) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.actor = name
        self.settings = settings
        self.ledger = ledger
        self.rng = random.Random(f"{seed}:{name}")
        self.stop_event = stop
        self.known: dict[str, int] = {}  # key -> the last version this thread was told
        self.failures = 0
        self.error: BaseException | None = None
        self.client = self._connect()

    def _connect(self) -> Client:
        client = connect(self.settings, actor=self.actor)
        self.pub = RecordingPublisher(client.publisher, self.settings.events_topic)
        client.publisher = self.pub  # type: ignore[assignment]
        return client

    def run(self) -> None:
        try:
            self.setup()
            while not self.stop_event.is_set():
                self.step()
        except BaseException as e:  # a harness bug: the test reports it
            self.error = e
        finally:
            self.client.close()

    def setup(self) -> None:
        pass

    def step(self) -> None:
        raise NotImplementedError

    def pause(self, low: float, high: float) -> None:
        self.stop_event.wait(self.rng.uniform(low, high))

    def command(self, op: str, key: str, publish: Callable[[], Result], **extra: Any) -> Record:
        """Run ``publish`` (a client write with ``wait=False``), then wait for its outcome
        through the client; record what the caller learned."""
        rec = Record(self.actor, op, key, began=time.monotonic() - self.ledger.t0, **extra)
        self.pub.reset()
        infra_failure = False
        try:
            result = publish()
        except Exception as e:
            sent = self.pub.event
            rec.reason = getattr(e, "code", type(e).__name__)
            if not isinstance(e, BlobledgerError):
                rec.untranslated = f"{type(e).__name__}: {e}"
            if sent is None:
                rec.status = "refused"
                infra_failure = not isinstance(e, DomainError)
            else:
                rec.event_id = sent.event_id
                rec.upload_id = getattr(sent, "upload_id", None)
                rec.status = "unknown_publish" if self.pub.receipt is None else "unknown_outcome"
                infra_failure = True
        else:
            rec.event_id = result.event_id
            rec.upload_id = result.upload_id
            try:
                outcome = self.client.wait(result.receipt)
                rec.status, rec.version = "accepted", outcome.version
                self.known[key] = outcome.version
            except DomainError as e:
                rec.status = "rejected"
                rec.reason, rec.version = _rejection(e)
                if rec.version is not None:
                    self.known[key] = rec.version
            except Exception as e:
                rec.status, rec.reason = "unknown_outcome", getattr(e, "code", type(e).__name__)
                if not isinstance(e, BlobledgerError):
                    rec.untranslated = f"{type(e).__name__}: {e}"
                infra_failure = True
        rec.seconds = time.monotonic() - self.ledger.t0 - rec.began
        self.ledger.add(rec)
        self._count_failure(infra_failure)
        return rec

    def _count_failure(self, failed: bool) -> None:
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= RECONNECT_AFTER:
            self.failures = 0
            self.client.close()
            self.client = self._connect()
            self.ledger.reconnected()


TAGS = ("red", "green", "blue", "hot", "cold")


class MetadataActor(Actor):
    """Creates, updates, tags, shares and deletes its own objects, sometimes with a stale
    expected version (conflicts), sometimes on another actor's objects (forbidden unless
    shared). Deletes hit short-lived keys only, so the long-lived ones stay writable."""

    def __init__(self, *args: Any, others: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.others = others
        self.own = [f"chaos/{self.actor}/{i}" for i in range(6)]
        self.temp = 0

    def setup(self) -> None:
        for key in self.own:
            self.create(key)

    def create(self, key: str) -> Record:
        c = self.client
        meta = {"n": 0, "by": self.actor}
        return self.command(
            "create", key, lambda: c.create(key, meta, tags=[self.rng.choice(TAGS)], wait=False)
        )

    def step(self) -> None:
        c, rng = self.client, self.rng
        op = rng.choices(
            ("update", "stale", "tag", "acl", "foreign", "create", "delete"),
            weights=(45, 10, 15, 6, 10, 6, 4),
        )[0]
        key = rng.choice(self.own)
        if op == "update":
            expected = self.known.get(key) if rng.random() < 0.5 else None
            patch = {"n": rng.randrange(10**6), "by": self.actor}
            self.command(
                "update", key, lambda: c.update(key, patch, expected_version=expected, wait=False)
            )
        elif op == "stale":
            expected = max(1, self.known.get(key, 1) - rng.randint(1, 3))
            self.command(
                "update",
                key,
                lambda: c.update(key, {"stale": True}, expected_version=expected, wait=False),
            )
        elif op == "tag":
            add, remove = rng.sample(TAGS, 2)
            self.command("tag", key, lambda: c.tag(key, add=[add], remove=[remove], wait=False))
        elif op == "acl":
            who = rng.choice(self.others)
            perms = rng.choice((["write"], ["read"], []))
            self.command("acl", key, lambda: c.set_acl(key, who, perms, wait=False))
        elif op == "foreign":
            other = f"chaos/{rng.choice(self.others)}/{rng.randrange(6)}"
            self.command("update", other, lambda: c.update(other, {"from": self.actor}, wait=False))
        elif op == "create":
            self.create(rng.choice(self.own))  # mostly exists already: rejected
        else:
            self.temp += 1
            temp = f"chaos/{self.actor}/temp-{self.temp}"
            if self.create(temp).status == "accepted":
                self.command("delete", temp, lambda: c.delete(temp, reason="chaos", wait=False))
        self.pause(0.0, 0.05)


class Uploader(Actor):
    """Attaches blobs to its own objects from every kind of source, one every second or so
    (the outcome of the upload itself is read from the read model at the end)."""

    def __init__(self, *args: Any, catalog: Catalog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.catalog = catalog
        # enough objects that an attach seldom supersedes one still pending (orphaning it)
        self.objects = [f"chaos/{self.actor}/blob-{i}" for i in range(8)]
        self.first: list[Source] = []

    def setup(self) -> None:
        c = self.client
        for key in self.objects:
            self.command("create", key, lambda k=key: c.create(k, {"blob": True}, wait=False))
        # every kind of failing source once, whatever the dice say later
        self.first = [self.catalog.failing(kind, self.rng) for kind in FAILING]
        self.rng.shuffle(self.first)

    def step(self) -> None:
        c, rng = self.client, self.rng
        key = rng.choice(self.objects)
        source = self.first.pop() if self.first else self.catalog.pick(rng)
        declared = source.sha256 if source.good and rng.random() < 0.5 else None
        self.command(
            "attach",
            key,
            lambda: c.attach_blob(key, source.location, declared_sha256=declared, wait=False),
            source=source,
        )
        self.pause(0.3, 1.5)
