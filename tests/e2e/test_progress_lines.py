"""Progress with stderr on a pipe: plain lines, no ``\\r``, then one final line.

``put`` (issue 13, found by testers: the bar jumped from 0 to done at 0.0 MB/s) shows the
bytes S3 has acknowledged growing part by part at a non-zero rate.

The worker runs in the test process behind a bandwidth-limited proxy to S3, so a 48 MiB
upload takes seconds (long enough for the CLI's 2-second lines), one 5 MiB part at a time
(so each acknowledgement moves the count: parts sent together are acknowledged together)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from blobledger import connect
from tests.integration.blob_support import MiB, TcpProxy, ThreadedWorker, make_file
from tests.integration.support import child_env

pytestmark = pytest.mark.e2e

LINE = re.compile(
    r"^put: uploading (?P<done>[\d.]+)/48\.0 MiB \(\d+%\) at (?P<rate>[\d.]+) MB/s, ETA "
)


class SlowProxy(TcpProxy):
    """A TcpProxy whose uploads (all connections together) share ``rate`` bytes/s."""

    def __init__(self, host: str, port: int, rate: float) -> None:
        self.rate, self._free_at, self._bucket = rate, 0.0, threading.Lock()
        super().__init__(host, port)

    def _pipe(self, a, b) -> None:
        upload = b.getpeername()[1] == self.target[1]
        try:
            while data := a.recv(1 << 16):
                if upload:
                    with self._bucket:
                        now = time.monotonic()
                        self._free_at = max(now, self._free_at) + len(data) / self.rate
                        wait = self._free_at - now
                    time.sleep(wait)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def test_put_on_a_pipe_prints_stored_bytes_growing_at_a_real_rate(settings, projector, tmp_path):
    target = urlsplit(settings.s3_url)
    proxy = SlowProxy(target.hostname, target.port, rate=6e6)
    worker_settings = settings.with_(
        s3_endpoint=f"http://127.0.0.1:{proxy.port}", min_part_size=5 * MiB, max_in_flight_parts=1
    )
    w = ThreadedWorker(worker_settings, transfer_attempts=2, max_backoff=1.0)
    try:
        path = tmp_path / "big.bin"
        sha = make_file(path, 48 * MiB)
        with connect(settings, actor="erin") as erin:
            erin.create("progress/big")
        assert w.worker.assigned.wait(60)
        p = subprocess.run(
            [sys.executable, "-m", "blobledger.infra.cli", "put", "progress/big", str(path)],
            env=child_env(settings, BLOBLEDGER_ACTOR="erin"),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        w.stop()
        proxy.close()
    assert p.returncode == 0, p.stderr
    assert sha in p.stdout
    progress = [line for line in p.stderr.splitlines() if line.startswith("put:")]
    assert "\r" not in p.stderr
    uploading = [m for line in progress if (m := LINE.match(line))]
    assert len(uploading) >= 2, progress
    stored = [float(m["done"]) for m in uploading]
    assert stored == sorted(stored) and stored[-1] > stored[0], progress
    assert any(float(m["rate"]) > 0 for m in uploading), progress
    assert re.match(r"put: stored 48\.0/48\.0 MiB in [\d.]+s \([\d.]+ MB/s\)$", progress[-1])


def test_replay_on_a_pipe_ends_with_one_plain_line(settings, projector):
    with connect(settings, actor="erin") as erin:
        for i in range(3):
            erin.create(f"progress/r{i}")
    p = subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", "replay", "--workers", "1"],
        env=child_env(settings, BLOBLEDGER_ACTOR="erin"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr
    (final,) = [line for line in p.stderr.splitlines() if line.startswith("replay:")]
    assert re.match(r"replay: swapped 3/3 events in [\d.]+s \([\d,]+ events/s\)$", final)
