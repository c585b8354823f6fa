"""What the blob Worker's unit tests share: the Worker built as ``bootstrap.worker`` builds
it, but on an :class:`InMemoryBroker` and an :class:`InMemoryBlobStore` (no services), and
an HTTP origin whose responses stall, drip or flow on cue.

Commands are published as ``Client.attach_blob`` publishes them; outcomes are read back
from the events topic with the codec, as the projector reads them. The origin listens on
127.0.0.2, which the rig's workers may reach (``source_allow_networks``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.runner import Worker
from blobledger.blob_worker.transfer import Transfer, TransferOptions
from blobledger.infra.memory import (
    InMemoryBlobStore,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    MemoryKeys,
)
from blobledger.infra.publisher import Publisher
from blobledger.infra.retry import CircuitBreaker
from blobledger.infra.settings import Settings
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import (
    Envelope,
    Event,
    UploadRequested,
    new_id,
    now_us,
    object_id_for,
)

MiB = 1024 * 1024
ORIGIN_HOST = "127.0.0.2"


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

    def worker(self, producer: InMemoryProducer | None = None, **kw: Any) -> Worker:
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
            **{"transfer_attempts": 2, "max_backoff": 0.1, **kw},
        )

    def run(self, worker: Worker, **kw: Any) -> int:
        try:
            return worker.run(**{"max_commands": 1, "idle_exit": 5.0, **kw})
        finally:
            worker.close()

    def request(
        self, source: str, key: str = "docs/report.pdf", *, deadline_us: int | None = None
    ) -> UploadRequested:
        """Publish an upload command the way ``Client.attach_blob`` does."""
        s = self.settings
        env = Envelope(object_id=object_id_for(s.tenant, key), actor="alice", tenant=s.tenant)
        command = UploadRequested(
            env.caused(actor="alice"),
            upload_id=new_id(),
            source=source,
            deadline=deadline_us or now_us() + s.upload_deadline_seconds * 1_000_000,
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

    def outcome_of(self, command: UploadRequested) -> Event | None:
        found = [e for e in self.outcomes() if getattr(e, "upload_id", None) == command.upload_id]
        return found[0] if found else None

    def wait_outcome(self, command: UploadRequested, timeout: float = 10.0) -> Event:
        deadline = time.monotonic() + timeout
        while (event := self.outcome_of(command)) is None:
            assert time.monotonic() < deadline, f"no outcome for {command.upload_id}"
            time.sleep(0.02)
        return event

    def partition_of(self, command: UploadRequested) -> int:
        (m,) = [
            m
            for m in self.broker.messages(self.settings.commands_topic)
            if self.codec.decode(m.value()).event_id == command.event_id
        ]
        partition = m.partition()
        assert partition is not None
        return partition

    def offset_of(self, command: UploadRequested) -> int:
        (m,) = [
            m
            for m in self.broker.messages(self.settings.commands_topic)
            if self.codec.decode(m.value()).event_id == command.event_id
        ]
        offset = m.offset()
        assert offset is not None
        return offset

    def committed(self, command: UploadRequested) -> int | None:
        """The worker group's committed offset on the command's partition."""
        return self.broker.committed(
            self.settings.worker_group, self.settings.commands_topic, self.partition_of(command)
        )


def make_rig(tmp_path: Path, **env: str) -> Iterator[Rig]:
    """A rig reading files under ``tmp_path`` and http from the origin's address;
    ``env``: more settings (``BLOBLEDGER_`` + upper case of each key)."""
    settings = Settings.from_env(
        {
            "BLOBLEDGER_DATA_DIR": str(tmp_path / "data"),
            "BLOBLEDGER_SOURCE_ROOTS": str(tmp_path),
            "BLOBLEDGER_SOURCE_ALLOW_NETWORKS": f"{ORIGIN_HOST}/32",
            "BLOBLEDGER_TOPIC_PREFIX": "unit",
            "BLOBLEDGER_PARTITIONS": "3",
            "BLOBLEDGER_WAIT_TIMEOUT_SECONDS": "10",
            **{f"BLOBLEDGER_{k.upper()}": v for k, v in env.items()},
        }
    )
    r = Rig(
        settings,
        InMemoryBroker.for_settings(settings),
        InMemoryBlobStore(bucket=settings.s3_bucket),
    )
    yield r
    r.cache.close()


class Background:
    """A worker running in a thread until :meth:`stop`."""

    def __init__(self, worker: Worker, **run: Any) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, kwargs=run, daemon=True)
        self.thread.start()
        assert worker.assigned.wait(5), "the worker got no partitions"

    def stop(self, timeout: float = 15.0) -> float:
        """Stop the worker and close it; the seconds that took."""
        t0 = time.monotonic()
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        self.worker.close()
        return time.monotonic() - t0


@dataclass
class Route:
    """What the origin answers on a path: ``body`` (with its Content-Length), of which
    ``stall_after`` bytes are sent before it waits for ``release``; with ``drip`` the rest
    goes a byte at a time, ``drip`` seconds apart."""

    body: bytes
    stall_after: int | None = None
    drip: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)
    #: requests that reached this route, and those answering now
    hits: int = 0
    active: int = 0


class Origin:
    """An HTTP origin on 127.0.0.2 serving :class:`Route` s."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                with outer._lock:
                    route.hits += 1
                    route.active += 1
                try:
                    self._answer(route)
                finally:
                    with outer._lock:
                        route.active -= 1

            def _answer(self, route: Route) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                sent = 0
                if route.stall_after is not None:
                    self.wfile.write(route.body[: route.stall_after])
                    self.wfile.flush()
                    sent = route.stall_after
                    route.release.wait(60)
                if route.drip:
                    for i in range(sent, len(route.body)):
                        self.wfile.write(route.body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.drip)
                else:
                    self.wfile.write(route.body[sent:])

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a worker that hung up on a stalled answer is what the tests want

        self.server = Server((ORIGIN_HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, path: str, body: bytes, **kw: Any) -> str:
        """Serve ``body`` on ``path`` (see :class:`Route`); the URL."""
        self.routes[path] = Route(body, **kw)
        return f"http://{ORIGIN_HOST}:{self.port}{path}"

    def active(self) -> int:
        with self._lock:
            return sum(r.active for r in self.routes.values())

    def close(self) -> None:
        for r in self.routes.values():
            r.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
