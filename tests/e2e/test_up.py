"""`blobledger up` / `status` / `down` as a user runs them, from a fresh data dir.

One stack of its own (temp dir, free ports: not the session's ``stack``), because ``up``
and ``down`` start and stop whole stacks. One ``up`` serves every step, in the order a
user meets them: a write with nothing consuming, ``up``, the CLI path, its metrics,
``status``, a crashed projector, ``down``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.stack.seaweed import stack_ports
from blobledger.infra.supervisor_state import running_supervisor
from blobledger.infra.testing.embedded import embedded_settings, private_dir
from tests.integration.support import child_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def fresh() -> Iterator[Settings]:
    """Settings for a stack nobody started yet; whatever the test left running is stopped."""
    with private_dir() as path:
        s = embedded_settings(Settings(), path / "data")
        # `up` serves metrics on 19464 unless told: a free port, as for the services
        s = s.with_(metrics_port=free_ports(1, avoid=stack_ports(s))[0])
        try:
            yield s
        finally:
            supervisor = running_supervisor(s)
            if supervisor is not None:
                os.kill(supervisor.pid, signal.SIGTERM)
                psutil.Process(supervisor.pid).wait(40)
            Stack(s).down()


def cli(
    settings: Settings, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", *args],
        env=child_env(settings, BLOBLEDGER_ACTOR="erin"),
        cwd=settings.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"blobledger {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr[-3000:]}"
        )
    return p


def status(settings: Settings) -> tuple[int, dict[str, Any]]:
    p = cli(settings, "status", "--json", check=False, timeout=60)
    assert p.returncode in (0, 1, 2), p.stderr
    return p.returncode, json.loads(p.stdout)


def status_until(settings: Settings, ok: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = status(settings)
        if ok(code, body):
            return body
        assert time.monotonic() < deadline, json.dumps(body, indent=1)
        time.sleep(1)


def _pids(body: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in body["processes"]}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The endpoint's samples: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _labels), v in samples.items() if n == name)


def test_up_runs_the_system_until_down(fresh: Settings) -> None:
    s = fresh
    # the stack alone, as after `blobledger demo`: a write finds no projector, and says so
    cli(s, "stack", "up")
    began = time.monotonic()
    lonely = cli(s, "object", "create", "docs/early.txt", check=False)
    assert lonely.returncode == 1, lonely.stderr
    assert "no projector is consuming" in lonely.stderr and "blobledger up" in lonely.stderr
    assert time.monotonic() - began < 10  # not the 30 s read-your-writes timeout

    # one command runs the rest; a second finds it running
    up = json.loads(cli(s, "up", "--json").stdout)
    assert up["ready"] is True and up["already_running"] is False, up
    assert {p["name"]: p["state"] for p in up["processes"]} == {
        "projector-0": "running",
        "worker-0": "running",
        "reaper": "running",
    }
    logs = Path(s.data_dir) / "logs"
    assert {Path(p["log"]) for p in up["processes"]} == {
        logs / "projector-0.log",
        logs / "worker-0.log",
        logs / "reaper.log",
    }
    metrics_url = f"http://127.0.0.1:{s.metrics_port}/metrics"
    assert up["metrics_url"] == metrics_url
    again = json.loads(cli(s, "up", "--json").stdout)
    assert again["already_running"] is True and _pids(again) == _pids(up)
    text = cli(s, "up").stdout
    assert "blobledger was already up" in text and "next: blobledger object create" in text
    assert metrics_url in text

    # the CLI path works with nothing else started (the early event was folded meanwhile)
    cli(s, "object", "create", "docs/first.txt")
    source = Path(s.data_dir).parent / "first.txt"
    source.write_bytes(b"first blob\n" * 1000)
    put = json.loads(cli(s, "put", "docs/first.txt", str(source), "--json").stdout)
    assert put["state"] == "stored", put
    out = Path(s.data_dir).parent / "out.txt"
    cli(s, "get", "docs/first.txt", "-o", str(out))
    assert out.read_bytes() == source.read_bytes()
    early = json.loads(cli(s, "object", "get", "docs/early.txt", "--json").stdout)
    assert early["version"] == 1

    # one endpoint sums every process's metrics: the projector's folds, command -> visible
    samples = scrape(metrics_url)
    assert total(samples, "blobledger_fold_batch_duration_seconds_bucket") > 0
    assert total(samples, "blobledger_command_visible_seconds_count") > 0

    # status: all caught up, nothing pending, exit 0
    body = status_until(s, lambda code, b: code == 0)
    assert body["state"] == "healthy" and body["reasons"] == []
    groups = {g["role"]: g for g in body["groups"]}
    assert groups["projector"]["lag"] == 0 and groups["worker"]["lag"] == 0
    assert groups["projector"]["verdict"] == "consuming"
    assert sum(p["end"] for p in groups["projector"]["partitions"]) == 4  # 2 creates, blob x2
    assert body["read_model"]["pending_uploads"] == 0
    assert body["read_model"]["finished_last_hour"] == {"stored": 1}
    assert body["dead_letters"]["count"] == 0
    assert {x["name"] for x in body["services"]} == {"postgres", "s3", "log-store", "kafka"}

    # a projector that dies is restarted by the supervisor, and folds again
    killed = _pids(body)["projector-0"]
    os.kill(killed, signal.SIGKILL)
    back = status_until(
        s,
        lambda code, b: any(
            p["name"] == "projector-0" and p["state"] == "running" and p["pid"] != killed
            for p in b["processes"]
        ),
    )
    assert next(p for p in back["processes"] if p["name"] == "projector-0")["restarts"] == 1
    # the dead projector's live gauge left the sum when it ended: one projector, not two
    live = ("blobledger_processes", (("service", "projector"),))
    deadline = time.monotonic() + 30
    while scrape(metrics_url).get(live) != 1:
        assert time.monotonic() < deadline, scrape(metrics_url).get(live)
        time.sleep(0.5)
    assert "--- " in (logs / "projector-0.log").read_text()  # the restart is in its log
    cli(s, "object", "update", "docs/first.txt", "--set", "after=restart")

    # down stops the processes, then the stack; a second down has nothing to do
    pids = [*_pids(back).values(), back["supervisor_pid"]]
    stopped = json.loads(cli(s, "down", "--json").stdout)
    assert stopped["services"] and any("supervisor" in p for p in stopped["processes"])
    assert not any(psutil.pid_exists(pid) and _ours(pid) for pid in pids)
    code, after = status(s)
    assert code == 2 and after["processes"] == []
    noop = cli(s, "down")
    assert "nothing to stop" in noop.stdout


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs one of our commands (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any(
            "blobledger" in part for part in proc.cmdline()
        )
    except psutil.Error:
        return False
