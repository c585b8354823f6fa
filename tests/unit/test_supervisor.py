"""The supervisor of ``blobledger up``: restart backoff, size-capped logs, the state file,
and stopping children (real child processes, no services)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from blobledger.infra import metrics
from blobledger.infra import supervisor_state as files
from blobledger.infra.backoff import RestartBackoff
from blobledger.infra.rotating_log import RotatingLog, trim
from blobledger.infra.settings import Settings
from blobledger.infra.supervisor import ChildSpec, Supervisor, exclusive, plan
from blobledger.infra.supervisor_state import BACKOFF, RUNNING, ProcessRef
from blobledger.infra.up_cli import up_settings
from blobledger.schemas.errors import StackError


# --- backoff ---------------------------------------------------------------------------------
def test_quick_exits_double_the_pause_up_to_the_cap() -> None:
    b = RestartBackoff(initial=1.0, factor=2.0, maximum=10.0, stable_after=30.0)
    assert [b.delay(uptime=0.5) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.failures == 6


def test_a_stable_run_forgives_earlier_crashes() -> None:
    b = RestartBackoff(initial=1.0, factor=2.0, maximum=60.0, stable_after=30.0)
    for _ in range(4):
        b.delay(uptime=1.0)
    assert b.delay(uptime=29.9) == 16.0  # still flapping: not stable long enough
    assert b.delay(uptime=30.0) == 1.0  # a long run, then a crash: a new incident
    assert b.failures == 1


# --- logs ------------------------------------------------------------------------------------
def test_rotating_log_caps_each_file_and_keeps_the_newest_backups(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "p.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    for i in range(10):
        log.write(f"{i:02d}".encode() * 20)  # 40 bytes each
    log.close()
    sizes = {p.name: p.stat().st_size for p in path.parent.iterdir()}
    assert set(sizes) == {"p.log", "p.log.1", "p.log.2"}
    assert all(size <= 100 for size in sizes.values())
    assert path.read_bytes() == b"08" * 20 + b"09" * 20  # the newest lines, whole
    assert (path.parent / "p.log.2").read_bytes() == b"04" * 20 + b"05" * 20
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    log.write(b"after close")  # a grandchild's late output is dropped, not an error


def test_trim_rotates_only_an_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    path.write_bytes(b"x" * 50)
    trim(path, max_bytes=100)
    assert path.stat().st_size == 50
    path.write_bytes(b"x" * 150)
    trim(path, max_bytes=100)
    assert path.stat().st_size == 0 and (tmp_path / "s.log.1").stat().st_size == 150


# --- the supervisor ----------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


Start = Callable[[list[ChildSpec]], Supervisor]


@pytest.fixture
def running(settings: Settings) -> Iterator[Start]:
    """Starts a supervisor on a thread; stops it (and its children) after the test."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(specs: list[ChildSpec]) -> Supervisor:
        sup = Supervisor(settings, specs)
        stop = threading.Event()
        thread = threading.Thread(target=sup.run, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))
        return sup

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(30)


def _wait(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_plan_follows_the_process_counts(settings: Settings) -> None:
    specs = plan(settings.with_(projectors=2, workers=3))
    assert [s.name for s in specs] == [
        "projector-0",
        "projector-1",
        "worker-0",
        "worker-1",
        "worker-2",
        "reaper",
    ]
    assert specs[0].argv[-1] == "projector" and specs[-1].argv[-1] == "reaper"


def test_a_crashing_child_is_restarted_with_growing_pauses(
    settings: Settings, running: Start
) -> None:
    sup = running([ChildSpec("crasher", "projector", _python("print('hi'); exit(3)"))])
    child = sup.children[0]
    _wait(lambda: child.restarts >= 2)
    state = files.read_state(settings)
    assert state is not None and state.fresh()
    assert state.children[0].last_exit == 3 and state.children[0].failures >= 2
    # pauses 1 s then 2 s: a crash loop does not spin
    assert child.backoff.failures >= 2 and child.restarts <= child.backoff.failures
    log = (files.logs_dir(settings) / "crasher.log").read_text()
    assert log.count("hi\n") >= 2 and "exited with status 3" in log and "restart in 2 s" in log


def test_a_killed_child_comes_back_and_the_state_file_says_so(
    settings: Settings, running: Start
) -> None:
    sup = running([ChildSpec("sleeper", "worker", _python("import time; time.sleep(600)"))])
    _wait(lambda: sup.children[0].running())
    first = sup.children[0].ref
    assert first is not None and first.alive()
    os.kill(first.pid, signal.SIGKILL)
    _wait(lambda: sup.children[0].restarts == 1 and sup.children[0].running(), timeout=10)
    _wait(
        lambda: (s := files.read_state(settings)) is not None
        and s.children[0].state == RUNNING
        and s.children[0].pid != first.pid
    )
    state = files.read_state(settings)
    assert state is not None
    (child,) = state.children
    assert child.state == RUNNING and child.last_exit == -signal.SIGKILL and child.running()
    assert not first.alive()


def test_stop_terms_then_kills_a_child_that_ignores_sigterm(settings: Settings) -> None:
    stubborn = _python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('deaf' + 'ness', flush=True); time.sleep(600)"
    )
    polite = _python("import time; time.sleep(600)")
    sup = Supervisor(
        settings, [ChildSpec("stubborn", "worker", stubborn), ChildSpec("polite", "reaper", polite)]
    )
    for child in sup.children:
        child.tick(time.monotonic())
    _wait(lambda: "deafness" in (files.logs_dir(settings) / "stubborn.log").read_text())
    refs = [c.ref for c in sup.children]
    began = time.monotonic()
    sup.stop_children(timeout=1.0)
    assert time.monotonic() - began < 10
    assert all(r is not None and not r.alive() for r in refs)
    assert [c.last_exit for c in sup.children] == [-signal.SIGKILL, -signal.SIGTERM]


def test_backoff_state_is_reported_while_waiting(settings: Settings) -> None:
    sup = Supervisor(settings, [ChildSpec("c", "projector", _python("exit(1)"))])
    child = sup.children[0]
    child.tick(time.monotonic())
    _wait(lambda: child.proc is not None and child.proc.poll() is not None)
    child.tick(time.monotonic())
    state = child.state()
    assert state.state == BACKOFF and state.pid is None and state.next_start is not None
    sup.stop_children(timeout=1.0)


def test_one_supervisor_per_data_dir(settings: Settings) -> None:
    with exclusive(settings), pytest.raises(StackError, match="another supervisor"):  # noqa: SIM117
        with exclusive(settings):
            pass
    with exclusive(settings):  # released when the first one left
        pass


def test_a_process_is_known_by_pid_and_start_time() -> None:
    me = ProcessRef.of(os.getpid())
    assert me is not None and me.alive()
    assert not ProcessRef(me.pid, me.create_time - 100).alive()  # a reused pid
    assert ProcessRef.of(2**22 + 12345) is None


# --- metrics: one endpoint for every child -----------------------------------------------------
def _summed(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the supervisor's endpoint would serve: every child's values, summed."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_children_metrics_are_summed_and_an_ended_childs_live_gauges_drop_out(
    settings: Settings,
) -> None:
    directory = metrics.prepare_multiprocess_dir(files.metrics_dir(settings))
    code = (
        "from blobledger.infra import metrics; metrics.observe_fold_batch(0.01, 3); "
        "metrics.PROCESSES.labels('projector').set(1); print('obs' + 'erved', flush=True); "
        "import time; time.sleep(600)"
    )
    sup = Supervisor(settings, [ChildSpec("p", "projector", _python(code))], metrics_dir=directory)
    child = sup.children[0]
    log = files.logs_dir(settings) / "p.log"
    count = ("blobledger_fold_batch_duration_seconds_count", ())
    live = ("blobledger_processes", (("service", "projector"),))
    try:
        child.tick(time.monotonic())
        _wait(lambda: log.exists() and log.read_text().count("observed") == 1)
        assert _summed(directory)[count] == 1 and _summed(directory)[live] == 1
        assert child.ref is not None
        os.kill(child.ref.pid, signal.SIGKILL)
        _wait(lambda: child.proc is not None and child.proc.poll() is not None)
        child.tick(time.monotonic())  # notices the exit
        assert live not in _summed(directory) and _summed(directory)[count] == 1
        child.tick(child.due or 0.0)  # the restart: its counts add to the dead one's
        _wait(lambda: log.read_text().count("observed") == 2)
        assert _summed(directory)[count] == 2 and _summed(directory)[live] == 1
    finally:
        sup.stop_children(timeout=1.0)
    assert live not in _summed(directory)  # a child stopped with the supervisor, too


def test_up_serves_metrics_on_the_scrape_port_unless_a_setting_names_one(tmp_path: Path) -> None:
    assert up_settings(Settings(), {}).metrics_port == metrics.SCRAPE_PORT == 19464
    assert up_settings(Settings(), {"BLOBLEDGER_METRICS_PORT": "0"}).metrics_port == 0
    config = tmp_path / "b.toml"
    config.write_text("metrics_port = 19465\n")
    env = {"BLOBLEDGER_CONFIG": str(config)}
    assert up_settings(Settings.from_env(env), env).metrics_port == 19465
    assert up_settings(Settings(), {}).data_dir.is_absolute()
