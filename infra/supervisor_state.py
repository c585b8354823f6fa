"""What the supervisor of ``blobledger up`` leaves in the data dir for other commands.

``run/supervisor.pid`` names the supervisor; ``run/supervisor.json`` is its state,
rewritten every second: each child with its pid, state, restarts and log file, and the
URL of the metrics endpoint it serves. ``run/metrics/`` holds the children's metric
values (prometheus-client's multiprocess files), which that endpoint sums. ``down``
finds the processes to stop there, ``status`` shows them, and a command about to wait on
a projector asks it first (infra/liveness.py): a fresh heartbeat with a live child is the
surest sign that one runs. A process is named by pid *and* start time, because pids are
reused: a stale file never makes us signal or trust an unrelated process.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from blobledger.infra.settings import Settings
from blobledger.infra.stack.private import make_private_dir, write_private

#: a state older than this is a dead supervisor's (it rewrites the file every second)
STALE_AFTER_SECONDS = 5.0

#: child states
RUNNING, BACKOFF, STOPPED = "running", "backoff", "stopped"


@dataclass(frozen=True)
class ProcessRef:
    """One process, for as long as it lives (pid + start time)."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (
                abs(proc.create_time() - self.create_time) < 0.01
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


@dataclass(frozen=True)
class ChildState:
    #: ``projector-0``, ``worker-1``, ``reaper``
    name: str
    #: the command it runs: ``projector`` | ``worker`` | ``reaper``
    role: str
    state: str
    log: str
    process: ProcessRef | None = None
    #: restarts since the supervisor started
    restarts: int = 0
    #: quick exits in a row (reset by a stable run)
    failures: int = 0
    last_exit: int | None = None
    #: wall-clock time the current process started, or the next start is due
    since: float = 0.0
    next_start: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.state == RUNNING and self.process is not None and self.process.alive()


@dataclass(frozen=True)
class SupervisorState:
    process: ProcessRef
    data_dir: str
    started: float
    heartbeat: float
    log: str
    children: tuple[ChildState, ...] = field(default_factory=tuple)
    #: the aggregated Prometheus endpoint of all the children (None: metrics port 0)
    metrics_url: str | None = None

    def fresh(self, now: float | None = None) -> bool:
        """Written recently by a supervisor that still runs."""
        now = time.time() if now is None else now
        return now - self.heartbeat < STALE_AFTER_SECONDS and self.process.alive()

    def of_role(self, role: str) -> list[ChildState]:
        return [c for c in self.children if c.role == role]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SupervisorState:
        children = tuple(
            ChildState(**{**c, "process": _ref(c.get("process"))}) for c in raw["children"]
        )
        process = _ref(raw["process"])
        if process is None:
            raise ValueError("supervisor state without a process")
        return cls(**{**raw, "process": process, "children": children})


def _ref(raw: dict[str, Any] | None) -> ProcessRef | None:
    return ProcessRef(int(raw["pid"]), float(raw["create_time"])) if raw else None


def run_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).absolute() / "run"


def state_path(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.json"


def pid_path(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.pid"


def lock_path(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.lock"


def metrics_dir(settings: Settings) -> Path:
    """The children's metric files: one run's, emptied when a supervisor starts."""
    return run_dir(settings) / "metrics"


def logs_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).absolute() / "logs"


def write_state(settings: Settings, state: SupervisorState) -> None:
    make_private_dir(run_dir(settings))
    write_private(state_path(settings), json.dumps(state.to_json()))


def read_state(settings: Settings) -> SupervisorState | None:
    """The last state written, or None when there is none (never started, or a clean
    ``down`` removed it) or it cannot be read."""
    try:
        return SupervisorState.from_json(json.loads(state_path(settings).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_supervisor(settings: Settings) -> ProcessRef | None:
    """The supervisor named by the pid file, while it runs."""
    try:
        pid, create_time = pid_path(settings).read_text().split()[:2]
        ref = ProcessRef(int(pid), float(create_time))
    except (OSError, ValueError):
        return None
    return ref if ref.alive() else None


def write_pid(settings: Settings, ref: ProcessRef) -> None:
    make_private_dir(run_dir(settings))
    write_private(pid_path(settings), f"{ref.pid} {ref.create_time}\n")


def clear(settings: Settings) -> None:
    """Remove the pid and state files (a supervisor that stopped cleanly)."""
    for path in (pid_path(settings), state_path(settings)):
        path.unlink(missing_ok=True)
