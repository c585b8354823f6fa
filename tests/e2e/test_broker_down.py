"""With the broker down, a command that needs it fails within the connect timeout, in one
line that names Kafka and its address: no traceback, no librdkafka lines, no minute-long
wait for the produce timeout. No services run here: every endpoint is a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blobledger.infra.freeports import free_ports
from blobledger.infra.keys import ensure_local_keys
from blobledger.infra.settings import Settings

pytestmark = pytest.mark.e2e

CONNECT_TIMEOUT = 3.0


@pytest.mark.parametrize(
    "command",
    [
        ("object", "create", "down/a.txt", "--set", "color=red"),
        ("dlq", "list"),
        ("replay",),
        ("reaper", "--once"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_command_fails_fast_in_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    kafka, postgres, s3 = free_ports(3)  # nothing listens: each is refused at once
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        postgres_dsn=f"postgresql://blobledger@127.0.0.1:{postgres}/blobledger",
        s3_endpoint=f"http://127.0.0.1:{s3}",
        connect_timeout_seconds=CONNECT_TIMEOUT,
    )
    ensure_local_keys(settings)  # the command gets as far as the broker
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
    env.update(settings.to_env(), BLOBLEDGER_ACTOR="erin")

    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - t0

    lines = p.stderr.splitlines()
    assert p.returncode == 1, p.stderr
    assert len(lines) == 1, p.stderr
    assert "kafka" in lines[0] and f"127.0.0.1:{kafka} is unreachable" in lines[0]
    assert "BLOBLEDGER_KAFKA_BOOTSTRAP" in lines[0]  # what to do
    assert "Traceback" not in p.stderr and "rdkafka" not in p.stderr + p.stdout
    assert p.stdout == ""
    assert elapsed < CONNECT_TIMEOUT + 2, elapsed
