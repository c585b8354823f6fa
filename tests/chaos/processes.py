"""The long-running blobledger processes of a chaos run, as a supervisor keeps them.

Each is ``python -m blobledger.infra.cli <command>`` with the test's settings in its
environment (what ``blobledger projector`` / ``worker`` / ``reaper`` are in production).
A watcher restarts any that exits (as systemd's ``Restart=always`` would); an exit the
chaos did not cause is recorded with its log tail, because it is a finding. Only the
processes started here are ever signalled, by their own pid.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: a supervisor's pause before restarting a process that exited on its own
RESTART_BACKOFF = 1.0


@dataclass
class Exit:
    """An exit of a supervised process that nobody asked for."""

    name: str
    returncode: int
    uptime: float
    tail: str


@dataclass
class Managed:
    name: str
    args: Sequence[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log_offset: int = 0
    #: why it is down on purpose: "chaos" (killed, until revived), "backoff" (exited by
    #: itself, restarted soon) or "stopped"; None while it is meant to run
    held: str | None = None
    restart_at: float = 0.0
    starts: int = 0
    kills: int = 0
    exits: list[Exit] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        """This incarnation's last log lines."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Starts, watches and restarts the processes. Every process is started from the one
    watcher thread and asked to die with it (``setpriv --pdeathsig``, where available;
    the signal follows the thread that forked), so a test process that crashes leaves no
    projector or worker behind."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: dict[str, Managed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="chaos-supervisor", daemon=True)
        setpriv = shutil.which("setpriv")
        self._prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []

    def add(self, name: str, *args: str) -> None:
        self.procs[name] = Managed(name, args, self.log_dir / f"{name}.log")

    def start(self) -> None:
        self._watcher.start()

    def _spawn(self, m: Managed) -> None:
        m.log_path.parent.mkdir(parents=True, exist_ok=True)
        with m.log_path.open("ab") as log:
            m.log_offset = log.tell()
            log.write(f"\n--- chaos: start #{m.starts + 1} of {m.name}\n".encode())
            log.flush()
            m.proc = subprocess.Popen(
                [*self._prefix, sys.executable, "-m", "blobledger.infra.cli", *m.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        m.started_at = time.monotonic()
        m.starts += 1

    def _watch(self) -> None:
        """Start what is meant to run and is not; an exit nobody asked for is recorded and
        restarted after :data:`RESTART_BACKOFF`."""
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                for m in self.procs.values():
                    if m.held == "backoff" and now >= m.restart_at:
                        m.held, m.proc = None, None
                    if m.held is not None:
                        continue
                    if m.proc is None:
                        self._spawn(m)
                    elif m.proc.poll() is not None:
                        m.exits.append(
                            Exit(m.name, m.proc.returncode, now - m.started_at, m.tail())
                        )
                        m.held, m.restart_at = "backoff", now + RESTART_BACKOFF
            self._stop.wait(0.2)

    def kill(self, name: str) -> bool:
        """SIGKILL ``name`` and hold it down until :meth:`revive`; False if it was not up."""
        with self._lock:
            m = self.procs[name]
            if m.held or not m.alive():
                return False
            m.held = "chaos"
            assert m.proc is not None
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
            m.kills += 1
            return True

    def revive(self, name: str) -> None:
        """Let the watcher start ``name`` again (after :meth:`kill`)."""
        with self._lock:
            m = self.procs[name]
            if m.held == "chaos":
                m.held, m.proc = None, None

    def all_alive(self) -> bool:
        with self._lock:
            return all(m.alive() for m in self.procs.values())

    def stop(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> dict[str, str]:
        """SIGTERM (then SIGKILL after ``timeout``) the named processes (default all) and
        hold them down; what each did: ``exit 0``, ``exit N`` or ``killed after Ns``."""
        wanted = list(names) if names is not None else list(self.procs)
        results: dict[str, str] = {}
        with self._lock:
            procs = [self.procs[n] for n in wanted]
            for m in procs:
                m.held = "stopped"
                if m.alive():
                    assert m.proc is not None
                    m.proc.send_signal(signal.SIGTERM)
        for m in procs:
            if m.proc is None:
                continue
            try:
                results[m.name] = f"exit {m.proc.wait(timeout)}"
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(10)
                results[m.name] = f"killed after {timeout:.0f}s"
        if names is None and self._watcher.is_alive():
            self._stop.set()  # only now: the children die with this thread
            self._watcher.join()
        return results
