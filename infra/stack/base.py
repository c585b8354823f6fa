"""The life cycle every embedded service shares: start-if-needed, wait-until-it-answers, stop.

Each service only says how to launch itself, how to probe it for real (a query, a bucket
head, a metadata request) and which binary its pid must run. "Up" means the probe passes,
not that a port is open, because every one of these binaries opens ports before it works.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from blobledger.infra.settings import Settings
from blobledger.infra.stack import _process
from blobledger.infra.stack.private import make_private_dir
from blobledger.schemas.errors import StackError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    endpoint: str
    #: True when this stack runs the service; False when settings point at an external one
    embedded: bool
    pid: int | None
    healthy: bool
    log_file: str | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Service(ABC):
    #: "postgres" | "s3" | "log-store" | "kafka" (the names the fixtures and the CLI use)
    name: ClassVar[str]
    #: seconds to wait for the probe to pass after launching
    start_timeout: ClassVar[float] = 30.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.data_dir = Path(settings.data_dir).absolute()

    # --- what each service defines -------------------------------------------------------
    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def embedded(self) -> bool: ...

    @property
    @abstractmethod
    def identity(self) -> str:
        """A string our process's command line contains (pids are reused, so a pid file
        alone could point at an unrelated process)."""

    @abstractmethod
    def probe(self, timeout: float) -> None:
        """Raise unless the service really answers a request within ``timeout``."""

    @abstractmethod
    def launch(self) -> None:
        """Start the daemon (do not wait for it)."""

    # --- shared behaviour ------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        pid = _process.read_pid(self.pid_file)
        return pid if _process.alive(pid, self.identity) else None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            self.probe(timeout)
            return True
        except Exception:
            return False

    def status(self) -> ServiceStatus:
        pid = self.pid() if self.embedded else None
        ok = self.healthy()
        detail = "" if ok else ("starting or stuck" if pid else "down")
        return ServiceStatus(
            name=self.name,
            endpoint=self.endpoint,
            embedded=self.embedded,
            pid=pid,
            healthy=ok,
            log_file=str(self.log_file) if self.embedded else None,
            detail=detail,
        )

    def start(self, timeout: float | None = None) -> bool:
        """Make the service healthy. Returns False when it already was (left alone)."""
        timeout = timeout or self.start_timeout
        if self.pid() is not None:
            if self.healthy():
                return False
            log.info("service.waiting", service=self.name, reason="process runs, not answering yet")
        else:
            if _process.port_in_use(self.port):
                raise StackError(
                    f"port {self.port} is already in use by another process "
                    f"(another stack, or change the port setting)",
                    service=self.name,
                    log_file=str(self.log_file),
                )
            make_private_dir(self.data_dir)
            make_private_dir(self.pid_file.parent)
            log.info("service.starting", service=self.name, endpoint=self.endpoint)
            self.launch()
        self.wait_healthy(timeout)
        return True

    def wait_healthy(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.probe(min(5.0, max(0.5, deadline - time.monotonic())))
                log.info(
                    "service.ready", service=self.name, seconds=round(time.monotonic() - started, 2)
                )
                return
            except Exception as e:
                last_error = e
            if self.pid() is None:
                raise StackError(
                    f"exited during startup; last log lines:\n{_process.tail(self.log_file)}",
                    service=self.name,
                    log_file=str(self.log_file),
                )
            time.sleep(0.2)
        raise StackError(
            f"did not answer on {self.endpoint} within {timeout:.0f}s ({last_error})",
            service=self.name,
            log_file=str(self.log_file),
        )

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop our process (SIGTERM, then SIGKILL). Returns False when it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        log.info("service.stopping", service=self.name, pid=pid)
        _process.terminate(pid, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return True
