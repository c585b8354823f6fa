"""A reaper pass reports the read model's pending uploads and what it did."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from blobledger import connect
from blobledger.infra import bootstrap

pytestmark = pytest.mark.integration


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_pass_reports_pending_uploads_and_its_actions(settings, projector, tmp_path):
    s = settings.with_(upload_deadline_seconds=1)
    path = tmp_path / "waiting.bin"
    path.write_bytes(b"no worker runs: it stays pending past its deadline")
    with connect(s, actor="alice") as alice:
        alice.create("reaped/one")
        alice.attach_blob("reaped/one", str(path))  # folded: pending
    time.sleep(1.5)
    compensated = value("blobledger_reaper_actions_total", action="compensated")
    reaper = bootstrap.reaper(s)
    try:
        report = reaper.run_once()
    finally:
        reaper.close()
    # as the read model held them when the pass began
    assert value("blobledger_pending_uploads") == 1
    assert value("blobledger_oldest_pending_upload_age_seconds") >= 1
    assert value("blobledger_upload_deadline_seconds") == 1
    assert report.compensated == 1
    assert value("blobledger_reaper_actions_total", action="compensated") == compensated + 1
