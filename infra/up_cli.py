"""``blobledger up`` and ``blobledger down``: the whole system with one command each.

``up`` starts the embedded stack (what settings leave embedded; external endpoints are
only probed), creates the topics, and starts the supervisor (infra/supervisor.py) that
keeps the projectors, blob workers and the reaper running and serves their metrics on one
endpoint. It returns once every process runs and its consumer group has formed, and
prints what it left running. Run twice, it starts nothing new. ``down`` stops the
processes (SIGTERM, SIGKILL after a timeout), then the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka.admin import AdminClient

from blobledger.infra import logging as blog
from blobledger.infra import supervisor_state as files
from blobledger.infra.kafka import make_admin
from blobledger.infra.liveness import CRASH_LOOP, ROLES, describe_group
from blobledger.infra.metrics import SCRAPE_PORT
from blobledger.infra.rotating_log import trim
from blobledger.infra.settings import PREFIX, Settings
from blobledger.infra.stack._process import tail
from blobledger.infra.stack.base import ServiceStatus
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.stack.private import CHILD_UMASK, make_private_dir, open_private_append
from blobledger.infra.supervisor import (
    STOP_TIMEOUT_SECONDS,
    child_env,
    plan,
    stop_on_signals,
    supervise,
)
from blobledger.infra.supervisor_state import RUNNING, ProcessRef, SupervisorState

#: a child counts as started once it has run this long (a bad setting fails sooner)
MIN_UPTIME_SECONDS = 1.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Readiness:
    ok: bool
    state: SupervisorState | None
    problems: list[str] = field(default_factory=list)


# --- up ----------------------------------------------------------------------------------
def up_settings(settings: Settings, env: Mapping[str, str] | None = None) -> Settings:
    """``settings`` with ``up``'s own defaults: a data dir made absolute, and the metrics
    endpoint on :data:`~blobledger.infra.metrics.SCRAPE_PORT` (the port the shipped
    Prometheus config scrapes) unless ``BLOBLEDGER_METRICS_PORT`` (env or config file)
    names one; 0 there serves none. The library's own default stays 0: a process
    embedding blobledger opens no port it did not ask for."""
    env = os.environ if env is None else env
    settings = settings.with_(data_dir=Path(settings.data_dir).absolute())
    if PREFIX + "METRICS_PORT" in env or "metrics_port" in _config_file_keys(env):
        return settings
    return settings.with_(metrics_port=SCRAPE_PORT)


def _config_file_keys(env: Mapping[str, str]) -> set[str]:
    """The keys of the ``BLOBLEDGER_CONFIG`` file (none without one; ``Settings.from_env``
    has read it already, so a broken file has failed before this)."""
    path = env.get(PREFIX + "CONFIG")
    if not path:
        return set()
    try:
        return set(tomllib.loads(Path(path).read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        return set()


def start_services(settings: Settings) -> list[ServiceStatus]:
    """The stack up (embedded services started, external ones probed), keys issued and the
    topics created."""
    from blobledger.infra.keys import ensure_local_keys
    from blobledger.infra.topics import ensure_topics

    stack = Stack(settings)
    if settings.uses_embedded_stack:
        _say(f"bringing up the embedded stack in {settings.data_dir} ...")
    statuses = stack.up()
    ensure_local_keys(settings)  # the first `up` issues the operator's and system keys
    ensure_topics(settings)
    return statuses


def spawn_supervisor(settings: Settings) -> subprocess.Popen[bytes]:
    """Start the supervisor detached (its own session, output to its log)."""
    logs = files.logs_dir(settings)
    make_private_dir(logs)
    log_path = logs / "supervisor.log"
    trim(log_path)
    argv = [
        sys.executable,
        "-m",
        "blobledger.infra.supervisor",
        "--data-dir",
        str(Path(settings.data_dir).absolute()),
    ]
    with os.fdopen(open_private_append(log_path), "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(settings),
            start_new_session=True,  # outlives this command and its terminal
            close_fds=True,
            umask=CHILD_UMASK,
        )
    return proc


def wait_ready(
    settings: Settings, timeout: float, starting: Callable[[], bool] = lambda: False
) -> Readiness:
    """Until every supervised child has run :data:`MIN_UPTIME_SECONDS` and the projector
    and worker groups have formed on the broker, or a child keeps crashing, or time is up.
    ``starting``: whether a supervisor just started runs (it may not have written its
    files yet)."""
    deadline = time.monotonic() + timeout
    admin = make_admin(settings, log_level=0)
    problems: list[str] = []
    state: SupervisorState | None = None
    while True:
        state = files.read_state(settings)
        if (
            not starting()
            and files.running_supervisor(settings) is None
            and (state is None or not state.fresh())
        ):
            log = files.logs_dir(settings) / "supervisor.log"
            return Readiness(False, state, [f"the supervisor exited:\n{tail(log)}"])
        if state is not None and state.fresh():
            problems = _not_ready(settings, state, admin)
            crashing = [
                c for c in state.children if c.state != RUNNING and c.failures >= CRASH_LOOP
            ]
            if not problems:
                return Readiness(True, state)
            if crashing:
                return Readiness(
                    False,
                    state,
                    [
                        f"{c.name} keeps exiting (status {c.last_exit}); the supervisor keeps "
                        f"restarting it. Last lines of {c.log}:\n{tail(Path(c.log))}"
                        for c in crashing
                    ],
                )
        if time.monotonic() >= deadline:
            return Readiness(False, state, problems or ["the supervisor wrote no state"])
        time.sleep(0.25)


def _not_ready(settings: Settings, state: SupervisorState, admin: AdminClient) -> list[str]:
    """What keeps ``up`` waiting (nothing: ready)."""
    now = time.time()
    problems = [
        f"{c.name} is {c.state}"
        for c in state.children
        if not (c.running() and now - c.since >= MIN_UPTIME_SECONDS)
    ]
    if problems:
        return problems
    for role in ROLES.values():
        if not state.of_role(role.name):
            continue
        group = role.group(settings)
        view = describe_group(admin, group, 1.0)
        if view is None or not (view.state == "stable" or view.members):
            problems.append(f"consumer group {group} has not formed yet")
    return problems


def _summary(
    settings: Settings,
    services: list[ServiceStatus],
    ready: Readiness,
    already: bool,
) -> dict[str, Any]:
    state = ready.state
    return {
        "data_dir": str(Path(settings.data_dir).absolute()),
        "ready": ready.ok,
        "already_running": already,
        "problems": ready.problems,
        "services": {s.name: s.as_dict() for s in services},
        "supervisor": (
            {"pid": state.process.pid, "log": state.log, "started": state.started}
            if state
            else None
        ),
        "metrics_url": state.metrics_url if state else None,
        "processes": [
            {
                "name": c.name,
                "role": c.role,
                "state": c.state,
                "pid": c.pid,
                "restarts": c.restarts,
                "log": c.log,
            }
            for c in (state.children if state else ())
        ],
    }


def _count_changes(settings: Settings, state: SupervisorState) -> list[str]:
    """What differs between the running processes and what the settings ask for now."""
    wanted = Counter(spec.role for spec in plan(settings))
    have = Counter(c.role for c in state.children)
    return [
        f"{have[role]} {role}(s) run, the settings ask for {wanted[role]}: "
        "`blobledger down` and `up` again to apply"
        for role in sorted(wanted | have)
        if wanted[role] != have[role]
    ]


def print_summary(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(body))
        return
    if body["ready"]:
        head = "blobledger was already up" if body["already_running"] else "blobledger is up"
    else:
        head = "blobledger is NOT ready"
    print(f"{head} (data dir {body['data_dir']})")
    print("\nservices")
    for name, s in body["services"].items():
        pid = f"pid {s['pid']}" if s["pid"] else ("external" if not s["embedded"] else "-")
        health = "healthy" if s["healthy"] else "DOWN"
        print(f"  {name:<10} {health:<8} {pid:<11} {s['endpoint']}")
    sup = body["supervisor"]
    if sup:
        print(f"\nprocesses (supervisor pid {sup['pid']}, log {sup['log']})")
        for p in body["processes"]:
            pid = f"pid {p['pid']}" if p["pid"] else "-"
            restarts = f" ({p['restarts']} restarts)" if p["restarts"] else ""
            print(f"  {p['name']:<12} {p['state']:<8} {pid:<11} {p['log']}{restarts}")
    if body["metrics_url"]:
        print(f"\nmetrics (all processes, Prometheus format): {body['metrics_url']}")
    for problem in body["problems"]:
        print(f"\nproblem: {problem}")
    for note in body.get("notes", ()):
        print(f"\nnote: {note}")
    if body["ready"]:
        print(
            "\nnext: blobledger object create docs/first.txt\n"
            "      blobledger put docs/first.txt ./first.txt   (then: blobledger get ...)\n"
            "      blobledger status [--watch]   |   blobledger down"
        )


def up_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger up",
        description="Start the embedded stack and supervised projectors, blob workers and "
        "a reaper (counts: BLOBLEDGER_PROJECTORS, BLOBLEDGER_WORKERS), with their metrics "
        f"on one endpoint (BLOBLEDGER_METRICS_PORT, default {SCRAPE_PORT}); idempotent.",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="supervise from this command until Ctrl+C (stops the processes, not the stack)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the processes")
    args = p.parse_args(argv)
    blog.configure()  # to stderr: stdout carries the summary
    settings = up_settings(Settings.from_env())
    services = start_services(settings)
    running = files.running_supervisor(settings)
    if args.foreground:
        if running is not None:
            _say(f"a supervisor already runs for this data dir (pid {running.pid})")
            return 1
        return _foreground(settings, services, args)
    spawned = None
    if running is None:
        _say("starting the supervised processes ...")
        spawned = spawn_supervisor(settings)
    ready = wait_ready(
        settings, args.timeout, lambda: spawned is not None and spawned.poll() is None
    )
    body = _summary(settings, services, ready, running is not None)
    if running is not None and ready.state is not None:
        body["notes"] = _count_changes(settings, ready.state)
    print_summary(body, args.json)
    return 0 if ready.ok else 1


def _foreground(settings: Settings, services: list[ServiceStatus], args: Any) -> int:
    stop = threading.Event()
    stop_on_signals(stop)

    def report() -> None:
        ready = wait_ready(settings, args.timeout, lambda: not stop.is_set())
        if not stop.is_set():
            print_summary(_summary(settings, services, ready, False), args.json)
            print("(Ctrl+C stops the processes)", file=sys.stderr, flush=True)

    threading.Thread(target=report, name="up-report", daemon=True).start()
    supervise(settings, stop)
    _say("stopped the processes; the stack still runs (`blobledger down` stops it)")
    return 0


# --- down --------------------------------------------------------------------------------
def terminate(ref: ProcessRef, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; nothing when it is gone already."""
    if not ref.alive():
        return
    try:
        proc = psutil.Process(ref.pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass


def stop_processes(settings: Settings, timeout: float = STOP_TIMEOUT_SECONDS) -> list[str]:
    """Stop the supervisor (which stops its children), then any child it left behind (a
    supervisor that was SIGKILLed); what was stopped."""
    stopped: list[str] = []
    supervisor = files.running_supervisor(settings)
    state = files.read_state(settings)
    if supervisor is not None:
        terminate(supervisor, timeout + 10)  # it gives its children ``timeout``
        stopped.append(f"supervisor (pid {supervisor.pid})")
    for child in state.children if state else ():
        if child.process is not None and child.process.alive():
            terminate(child.process, timeout)
            stopped.append(f"{child.name} (pid {child.pid}, left behind)")
        elif supervisor is not None and child.pid is not None:
            stopped.append(f"{child.name} (pid {child.pid})")
    files.clear(settings)
    return stopped


def down_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger down",
        description="Stop what `blobledger up` started: the supervised processes "
        "(gracefully), then the embedded stack.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT_SECONDS,
        help="seconds a process gets after SIGTERM before SIGKILL",
    )
    args = p.parse_args(argv)
    blog.configure()
    settings = Settings.from_env()
    settings = settings.with_(data_dir=Path(settings.data_dir).absolute())
    processes = stop_processes(settings, args.timeout)
    stack = Stack(settings)
    services = [s.name for s in stack.embedded if s.pid() is not None]
    if services:
        stack.down()
    if args.json:
        print(json.dumps({"processes": processes, "services": services}))
    elif not processes and not services:
        print(f"nothing to stop: neither `up` nor the stack runs for {settings.data_dir}")
    else:
        for line in processes:
            print(f"stopped {line}")
        if services:
            print(f"stopped the stack: {', '.join(services)}")
    return 0
