"""The long-running commands as processes: each serves its metrics on its own port when
``BLOBLEDGER_METRICS_PORT`` is set, and every log line names its service."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from blobledger import connect
from blobledger.infra.bootstrap import METRICS_PORT_OFFSETS
from blobledger.infra.freeports import bindable, free_ports
from tests.integration.support import Proc

pytestmark = pytest.mark.e2e


def scrape(url: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, f"nothing served on {url}"
            time.sleep(0.3)


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def scrape_until(url: str, series: str, expected: float, timeout: float = 30.0) -> str:
    """The scrape once ``series`` shows ``expected`` (a metric moves just after the commit
    a waiter sees)."""
    deadline = time.monotonic() + timeout
    while (sample(text := scrape(url), series)) != expected:
        assert time.monotonic() < deadline, f"{series} is not {expected}:\n{text}"
        time.sleep(0.3)
    return text


def test_each_process_serves_its_metrics_and_names_itself_in_its_logs(settings, tmp_path):
    base = next(p for p in free_ports(20) if bindable(p + 1) and bindable(p + 2))
    s = settings.with_(metrics_port=base)
    logs = {name: tmp_path / f"{name}.log" for name in ("projector", "worker")}
    procs = {name: Proc(s, [name], str(path)) for name, path in logs.items()}
    try:
        source = tmp_path / "served.bin"
        source.write_bytes(b"metrics e2e")
        with connect(s, actor="alice") as alice:
            alice.create("served/one")
            upload = alice.attach_blob("served/one", str(source))
            assert alice.wait_upload(upload.upload_id, timeout=60).state == "stored"
        url = "http://127.0.0.1:{}/metrics".format
        # the create, the attach and the completion
        folded = scrape_until(
            url(base + METRICS_PORT_OFFSETS["projector"]), "blobledger_events_accepted_total", 3
        )
        uploaded = scrape_until(
            url(base + METRICS_PORT_OFFSETS["worker"]),
            'blobledger_uploads_total{outcome="stored",reason=""}',
            1,
        )
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
    assert codes == {"projector": 0, "worker": 0}
    assert 'blobledger_processes{service="projector"} 1.0' in folded
    assert (sample(folded, "blobledger_fold_batch_duration_seconds_count") or 0) >= 1
    assert sample(uploaded, 'blobledger_processes{service="worker"}') == 1
    for name, path in logs.items():
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        assert lines and all(line.get("service") == name for line in lines), name
