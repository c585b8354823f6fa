"""`blobledger demo --json` against the test stack's services, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.support import child_env

pytestmark = pytest.mark.e2e


def run_demo(settings, size_mib: int = 16) -> dict:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "blobledger.infra.cli",
            "demo",
            "--json",
            "--size-mib",
            str(size_mib),
            "--timeout",
            "180",
        ],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert p.returncode == 0, f"demo failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def check(result: dict, size_mib: int) -> None:
    assert result["verified"] is True
    assert result["size"] == size_mib * 1024 * 1024 and len(result["sha256"]) == 64
    assert result["version"] == 3  # created, attached, attached again (the failed one)
    assert result["compensated"]["reason"] == "source_not_found"
    assert result["compensated"]["upload_id"]
    assert result["projection_lag"] == 0 and result["seconds"] > 0


def test_demo_end_to_end(settings):
    check(run_demo(settings), 16)
