"""Process plumbing shared by the embedded services: daemon spawn, pid files, stop, ports.

Services are daemonized (own session, output to a log file) so they outlive the CLI that
started them; pid files let a later ``stack down``/``status`` find them again. A pid is
only trusted when the live process still runs the expected binary (pids get reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from blobledger.infra.stack.private import (
    CHILD_UMASK,
    make_private_dir,
    open_private_append,
    write_private,
)


def alive(pid: int | None, expect: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its command line mentions ``expect``."""
    if not pid:
        return False
    _reap(pid)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return expect is None or any(expect in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _reap(pid: int) -> None:
    """Collect a dead child of ours so it does not linger as a zombie (tests spawn children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached from our session, output appended to ``log_file``. The child
    runs with umask 077 and the log and pid files are owner-only: see ``private``."""
    make_private_dir(log_file.parent)
    with os.fdopen(open_private_append(log_file), "ab") as log:
        log.write(
            f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # Ctrl+C in the CLI's terminal must not kill the stack
            close_fds=True,
            umask=CHILD_UMASK,
        )
    make_private_dir(pid_file.parent)
    write_private(pid_file, f"{proc.pid}\n")
    return proc.pid


def terminate(pid: int | None, *, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. No-op when already gone."""
    if not pid:
        return
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)  # psutil reaps our own children here
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass
    _reap(pid)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    try:
        data = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def wait_until(predicate, *, timeout: float, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
