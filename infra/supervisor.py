"""The supervisor behind ``blobledger up``: keeps the projectors, blob workers and the
reaper running as child processes.

Each child is an ordinary ``blobledger projector|worker|reaper`` command (the same a
user would start by hand), so a supervised process behaves exactly like a manual one.
A child that exits is restarted after :class:`~blobledger.infra.backoff.RestartBackoff`'s
pause; its output goes through a pipe into ``<data_dir>/logs/<name>.log``, size-capped
(:mod:`.rotating_log`). The state every other command reads (``down``, ``status``, the
liveness check of a waiting command) is rewritten every second (:mod:`.supervisor_state`).

Metrics: the children run in prometheus-client's multiprocess mode (their values go to
files under ``run/metrics/``, they serve nothing), and the supervisor serves the sum on
``metrics_port`` (:func:`~blobledger.infra.metrics.serve_aggregate`): one scrape target
however many processes run, and counters survive a child's restart. When a child ends,
its live gauges (transfers in flight, processes) are dropped from the sum.

One supervisor per data dir: it holds an exclusive lock on ``run/supervisor.lock`` for
its whole life, so two racing ``up`` commands never start two sets of children. SIGTERM
or SIGINT stops it: every child gets SIGTERM at once, and SIGKILL after
:data:`STOP_TIMEOUT_SECONDS`.

Run detached by ``blobledger up`` as ``python -m blobledger.infra.supervisor``, or in the
foreground by ``blobledger up --foreground``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from blobledger.infra import logging as blog
from blobledger.infra import metrics
from blobledger.infra import supervisor_state as files
from blobledger.infra.backoff import RestartBackoff
from blobledger.infra.rotating_log import RotatingLog
from blobledger.infra.settings import Settings
from blobledger.infra.stack.private import CHILD_UMASK, make_private_dir
from blobledger.infra.supervisor_state import (
    BACKOFF,
    RUNNING,
    STOPPED,
    ChildState,
    ProcessRef,
    SupervisorState,
)
from blobledger.schemas.errors import ConfigurationError, StackError

log = blog.get_logger(__name__)

#: how long children get to leave after SIGTERM (a worker needs ~2 s, a projector one
#: batch) before SIGKILL; nothing is lost either way, this only spares a redelivery
STOP_TIMEOUT_SECONDS = 20.0
#: how often children are checked and the state file rewritten
TICK_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str
    argv: tuple[str, ...]


def plan(settings: Settings) -> list[ChildSpec]:
    """The processes ``up`` runs: ``settings.projectors`` projectors, ``settings.workers``
    blob workers and one reaper, each a ``blobledger`` subcommand."""
    cli = (sys.executable, "-m", "blobledger.infra.cli")
    counts = (("projector", settings.projectors), ("worker", settings.workers))
    specs = [ChildSpec(f"{role}-{i}", role, (*cli, role)) for role, n in counts for i in range(n)]
    specs.append(ChildSpec("reaper", "reaper", (*cli, "reaper")))
    return specs


def child_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the supervisor and its children: the caller's, with every
    setting written out (a relative data dir made absolute), so each child sees exactly
    the settings ``up`` resolved."""
    resolved = settings.with_(data_dir=Path(settings.data_dir).absolute())
    env = dict(os.environ if base is None else base)
    env.update(resolved.to_env())
    env["BLOBLEDGER_LOG_JSON"] = "1"  # the logs are files: one JSON object a line
    env["PYTHONUNBUFFERED"] = "1"  # a crash's last lines reach the log
    return env


def _ignore_exit(pid: int) -> None:
    """A child's exit, where nothing is kept per process."""


class Child:
    """One supervised process slot: its current process, restarts and log."""

    def __init__(
        self,
        spec: ChildSpec,
        *,
        env: Mapping[str, str],
        logs: Path,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.spec = spec
        #: called with the pid of each of its processes that ended
        self.on_exit = on_exit or _ignore_exit
        self.env = dict(env)
        self.log_path = logs / f"{spec.name}.log"
        self.log = RotatingLog(self.log_path)
        self.backoff = RestartBackoff()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ref: ProcessRef | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.started = 0.0  # monotonic
        self.since = 0.0  # wall clock of the current start
        self.due: float | None = 0.0  # monotonic time of the next start; None: running
        self.next_start: float | None = None  # the same, wall clock (for the state file)
        self._reader: threading.Thread | None = None

    def _note(self, text: str) -> None:
        self.log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())

    def start(self) -> None:
        self._note(f"starting: {' '.join(self.spec.argv)}")
        self.proc = subprocess.Popen(
            list(self.spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            # its own session: Ctrl+C in a foreground `up` reaches the supervisor only,
            # which then stops the children in order
            start_new_session=True,
            close_fds=True,
            umask=CHILD_UMASK,
        )
        self.ref = ProcessRef.of(self.proc.pid)
        self.started, self.since, self.due, self.next_start = (
            time.monotonic(),
            time.time(),
            None,
            None,
        )
        self._reader = threading.Thread(
            target=self._copy_output, args=(self.proc,), name=f"log-{self.spec.name}", daemon=True
        )
        self._reader.start()
        log.info("child.started", child=self.spec.name, pid=self.proc.pid)

    def _copy_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.log.write(chunk)
        proc.stdout.close()

    def tick(self, now: float) -> None:
        """Notice an exit (and schedule the restart), or start when the pause is over."""
        if self.proc is not None and self.due is None:
            code = self.proc.poll()
            if code is None:
                return
            self.on_exit(self.proc.pid)
            uptime = now - self.started
            pause = self.backoff.delay(uptime)
            self.last_exit, self.due, self.next_start = code, now + pause, time.time() + pause
            self._note(f"exited with status {code} after {uptime:.1f} s; restart in {pause:g} s")
            log.warning(
                "child.exited",
                child=self.spec.name,
                status=code,
                uptime=round(uptime, 1),
                restart_in=pause,
            )
        if self.due is not None and now >= self.due:
            if self.proc is not None:
                self.restarts += 1
            self.start()

    def running(self) -> bool:
        return self.proc is not None and self.due is None and self.proc.poll() is None

    def state(self) -> ChildState:
        if self.running():
            state, ref = RUNNING, self.ref
        else:
            state, ref = (BACKOFF if self.due is not None else STOPPED), None
        return ChildState(
            name=self.spec.name,
            role=self.spec.role,
            state=state,
            log=str(self.log_path),
            process=ref,
            restarts=self.restarts,
            failures=self.backoff.failures,
            last_exit=self.last_exit,
            since=self.since,
            next_start=self.next_start,
        )

    def signal(self, signum: int) -> None:
        if self.running() and self.proc is not None:
            self.proc.send_signal(signum)

    def close(self) -> None:
        """After the process exited: collect the rest of its output, close the log."""
        if self.proc is not None:
            code = self.proc.wait()
            if self.due is None:  # it ended in the stop: tick has not seen the exit
                self.last_exit = code
                self.on_exit(self.proc.pid)
        if self._reader is not None:
            self._reader.join(5)
        self.due = None
        self.proc = None
        self.log.close()


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        specs: Sequence[ChildSpec] | None = None,
        *,
        metrics_dir: Path | None = None,
        metrics_url: str | None = None,
    ) -> None:
        """``metrics_dir``: the children write their metrics there (multiprocess mode)
        for the endpoint at ``metrics_url`` to sum; None: they keep their own settings."""
        self.settings = settings
        self.env = child_env(settings)
        self.metrics_url = metrics_url
        on_exit: Callable[[int], None] | None = None
        if metrics_dir is not None:
            self.env.update(metrics.multiprocess_env(metrics_dir))
            on_exit = functools.partial(_process_exited, metrics_dir)
        logs = files.logs_dir(settings)
        make_private_dir(logs)
        self.children = [
            Child(s, env=self.env, logs=logs, on_exit=on_exit) for s in specs or plan(settings)
        ]
        self.started = time.time()
        self.ref = ProcessRef.of(os.getpid())
        self.log_path = logs / "supervisor.log"

    def state(self) -> SupervisorState:
        assert self.ref is not None
        return SupervisorState(
            process=self.ref,
            data_dir=str(Path(self.settings.data_dir).absolute()),
            started=self.started,
            heartbeat=time.time(),
            log=str(self.log_path),
            children=tuple(c.state() for c in self.children),
            metrics_url=self.metrics_url,
        )

    def run(self, stop: threading.Event) -> None:
        """Keep the children running until ``stop`` is set, then stop them."""
        log.info("supervisor.started", children=[c.spec.name for c in self.children])
        last_write = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    try:
                        child.tick(now)
                    except OSError as e:  # cannot even fork: try again after the pause
                        child.due = now + child.backoff.delay(0.0)
                        log.error("child.start_failed", child=child.spec.name, error=str(e))
                if now - last_write >= HEARTBEAT_SECONDS:
                    files.write_state(self.settings, self.state())
                    last_write = now
                stop.wait(TICK_SECONDS)
        finally:
            self.stop_children()

    def stop_children(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.running() for c in self.children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in self.children:
            if child.running():
                log.warning("child.killed", child=child.spec.name, after_seconds=timeout)
                child.signal(signal.SIGKILL)
            child.close()
        log.info("supervisor.stopped")


@contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """Hold the data dir's supervisor lock, or fail at once when another supervisor has it."""
    make_private_dir(files.run_dir(settings))
    fd = os.open(files.lock_path(settings), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise StackError(
                f"another supervisor runs for {files.run_dir(settings).parent}",
                service="supervisor",
            ) from e
        yield
    finally:
        os.close(fd)  # releases the lock


def _process_exited(directory: Path, pid: int) -> None:
    try:
        metrics.process_exited(pid, directory)
    except OSError as e:  # a metric file we cannot remove must not stop the supervision
        log.warning("metrics.cleanup_failed", pid=pid, error=str(e))


def supervise(settings: Settings, stop: threading.Event) -> None:
    """Run a supervisor in this process until ``stop`` is set (the caller installs the
    signal handlers that set it: only the main thread can). Serves the children's summed
    metrics on ``settings.metrics_port`` (none when 0); a port in use fails it with
    :class:`ConfigurationError` before any child starts."""
    with exclusive(settings):
        # emptied only under the lock: another supervisor's children may be writing there
        directory = metrics.prepare_multiprocess_dir(files.metrics_dir(settings))
        server = metrics.serve_aggregate(settings, directory)
        supervisor = Supervisor(
            settings,
            metrics_dir=directory if server is not None else None,
            metrics_url=server.url if server is not None else None,
        )
        assert supervisor.ref is not None
        files.write_pid(settings, supervisor.ref)
        files.write_state(settings, supervisor.state())
        try:
            if server is not None:
                log.info("supervisor.metrics", url=server.url)
            supervisor.run(stop)
        finally:
            files.clear(settings)
            if server is not None:
                server.close()


def stop_on_signals(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        log.info("supervisor.signal", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blobledger.infra.supervisor",
        description="Run the supervised processes of `blobledger up` (started by it).",
    )
    # also in the command line so that `ps` tells one data dir's supervisor from another's
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    blog.configure(json=True)
    settings = Settings.from_env().with_(data_dir=args.data_dir)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        supervise(settings, stop)
    except (StackError, ConfigurationError) as e:
        log.error("supervisor.refused", error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
