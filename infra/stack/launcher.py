"""The supervisor: brings the embedded services up in dependency order and down in reverse.

Only services whose endpoint is not external are managed. ``up`` is idempotent: a healthy
service is left alone, so running it twice (or from the demo and the CLI) is safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from blobledger.infra.settings import Settings
from blobledger.infra.stack.base import Service, ServiceStatus
from blobledger.infra.stack.postgres import EmbeddedPostgres
from blobledger.infra.stack.private import lock_down, make_private_dir
from blobledger.infra.stack.seaweed import SeaweedLogStore, SeaweedS3
from blobledger.infra.stack.tansu import TansuKafka
from blobledger.schemas.errors import StackError

log = structlog.get_logger(__name__)

#: start order: the broker keeps its log in its own S3 (the log store), which comes first.
#: "s3" is the blob store only: stopping it leaves the broker (the metadata path) running.
ORDER = ("postgres", "s3", "log-store", "kafka")
ALIASES = {
    "seaweed": "s3",
    "seaweedfs": "s3",
    "blob-store": "s3",
    "tansu": "kafka",
    "pg": "postgres",
    "broker-s3": "log-store",
    "log-s3": "log-store",
    "seaweed-log": "log-store",
}
#: what a service needs running first (started with it by ``up``)
NEEDS = {"kafka": ("log-store",)}


class Stack:
    """``Stack(settings).up()`` / ``.down()`` / ``.status()`` for the embedded services."""

    def __init__(self, settings: Settings, *, timeout: float | None = None):
        self.settings = settings
        self.timeout = timeout
        self._services: dict[str, Service] = {
            "postgres": EmbeddedPostgres(settings),
            "s3": SeaweedS3(settings),
            "log-store": SeaweedLogStore(settings),
            "kafka": TansuKafka(settings),
        }

    def service(self, name: str) -> Service:
        key = ALIASES.get(name, name)
        if key not in self._services:
            raise StackError(f"unknown service {name!r}; known: {', '.join(ORDER)}")
        return self._services[key]

    @property
    def embedded(self) -> list[Service]:
        """The services this stack runs, in start order."""
        return [self._services[n] for n in ORDER if self._services[n].embedded]

    def _wanted(self, services: Iterable[str] | None) -> set[str] | None:
        if not services:
            return None
        wanted = {self.service(n).name for n in services}  # unknown names fail here
        for name in list(wanted):
            wanted.update(NEEDS.get(name, ()))
        return wanted

    def up(self, services: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Start what is not healthy yet and wait until each really answers.

        Only the broker depends on anything (its log store), so three chains start side
        by side: Postgres, the blob store, and log store -> broker (a cold ``up`` then
        takes as long as its slowest chain)."""
        wanted = self._wanted(services)
        todo = [s for s in self.embedded if wanted is None or s.name in wanted]
        if todo:
            self.secure_data_dir()
        chains = [
            [s for s in todo if s.name == "postgres"],
            [s for s in todo if s.name == "s3"],
            [s for s in todo if s.name in ("log-store", "kafka")],
        ]
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="stack-up") as pool:
            futures = [pool.submit(self._start_chain, chain) for chain in chains if chain]
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        if todo:  # again: a process of an older version wrote files until it was restarted
            self.secure_data_dir()
        return self.status()

    def secure_data_dir(self) -> None:
        """Owner-only modes over the whole data dir before anything starts: what an older
        version, or a tool with a loose umask, left readable is closed (``private``). As
        root, the Postgres user keeps its way through to its files, running or not."""
        data_dir = Path(self.settings.data_dir).absolute()
        make_private_dir(data_dir)
        pg = self._services["postgres"]
        shared = (
            pg.shared_dir_modes()
            if isinstance(pg, EmbeddedPostgres) and (pg.embedded or pg.pid() is not None)
            else {}
        )
        lock_down(data_dir, dir_modes=shared)

    def _start_chain(self, chain: list[Service]) -> None:
        for svc in chain:
            t0 = time.monotonic()
            started = svc.start(self.timeout)
            log.info(
                "stack.service_up",
                service=svc.name,
                started=started,
                seconds=round(time.monotonic() - t0, 2),
            )

    def down(self, services: Iterable[str] | None = None) -> None:
        """Stop our services in reverse order (the broker before its log store goes away).
        A process of ours that settings no longer call for (e.g. the log store after a
        switch to broker_storage=memory) is stopped too."""
        wanted = {self.service(n).name for n in services} if services else None
        errors: list[str] = []
        for svc in reversed([self._services[n] for n in ORDER]):
            if (wanted is None or svc.name in wanted) and (svc.embedded or svc.pid() is not None):
                try:
                    svc.stop()
                except Exception as e:
                    errors.append(f"{svc.name}: {e}")
        if errors:
            raise StackError("could not stop cleanly: " + "; ".join(errors))

    def status(self) -> list[ServiceStatus]:
        """Every service the settings call for (the log store only when the embedded broker
        logs to S3), external ones included."""
        return [
            self._services[n].status()
            for n in ORDER
            if n != "log-store" or self._services[n].embedded
        ]

    def healthy(self) -> bool:
        return all(s.healthy for s in self.status())

    def stop_service(self, name: str) -> None:
        """Stop one embedded service (outage tests); the others keep running. ``s3`` is the
        blob store only; ``log-store`` is the broker's storage."""
        svc = self.service(name)
        if not svc.embedded:
            raise StackError(
                "is not run by this stack (external, or not needed with these settings)",
                service=svc.name,
            )
        svc.stop()

    def start_service(self, name: str) -> None:
        svc = self.service(name)
        if not svc.embedded:
            raise StackError(
                "is not run by this stack (external, or not needed with these settings)",
                service=svc.name,
            )
        svc.start(self.timeout)
