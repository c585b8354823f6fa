"""The pure helpers of the blob benchmarks (P3, P4, P6)."""

from __future__ import annotations

import json
import math
import os

from blobledger.benchmarks.blobs import (
    MiB,
    completed_uploads,
    freshen,
    make_blob_file,
    median,
    peak_rss_of,
    summarize_ms,
    vm_hwm_bytes,
)

STATUS = """Name:\tpython
VmPeak:\t  812345 kB
VmSize:\t  800000 kB
VmHWM:\t  123456 kB
VmRSS:\t  100000 kB
"""


def test_vm_hwm_parses_kib() -> None:
    assert vm_hwm_bytes(STATUS) == 123456 * 1024


def test_vm_hwm_missing_or_garbled() -> None:
    assert vm_hwm_bytes("Name:\tx\nVmRSS:\t 5 kB\n") is None
    assert vm_hwm_bytes("VmHWM:\t  n/a kB\n") is None
    assert vm_hwm_bytes("") is None


def test_peak_rss_of_this_process() -> None:
    if not os.path.exists("/proc/self/status"):
        return
    peak = peak_rss_of(os.getpid())
    assert peak is not None and peak > 1 * MiB
    assert peak_rss_of(2**22 + 12345) is None  # no such pid


def _line(**rec: object) -> str:
    return json.dumps(rec)


def test_completed_uploads_keeps_the_last_record_per_upload() -> None:
    lines = [
        "not json at all",
        _line(event="upload.started", upload_id="u1"),
        _line(event="upload.completed", upload_id="u1", bytes_sent=10, dedup=False, duration_ms=5),
        "{broken upload.completed",
        _line(event="upload.completed", upload_id="u2", bytes_sent=0, dedup=True, duration_ms=1),
        _line(event="upload.completed", upload_id="u1", bytes_sent=0, dedup=True, duration_ms=2),
        _line(event="something upload.completed", upload_id="u3"),
        _line(event="upload.completed"),  # no upload id
    ]
    got = completed_uploads(lines)
    assert set(got) == {"u1", "u2"}
    assert got["u1"]["bytes_sent"] == 0 and got["u1"]["duration_ms"] == 2
    assert got["u2"]["dedup"] is True


def test_median_and_summary() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))
    s = summarize_ms([i / 1000.0 for i in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100
    assert math.isclose(s["p50_ms"], 50.0) and math.isclose(s["p99_ms"], 99.0)
    assert math.isclose(s["max_ms"], 100.0)
    empty = summarize_ms([])
    assert empty["n"] == 0 and math.isnan(empty["p99_ms"])


def test_blob_file_and_freshen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = make_blob_file(tmp_path / "b.bin", 2 * MiB + 3)
    assert p.stat().st_size == 2 * MiB + 3
    data = p.read_bytes()
    assert data[:MiB] != data[MiB : 2 * MiB]  # the per-MiB counter varies each MiB
    before = os.stat(p)
    freshen(p)
    after = os.stat(p)
    assert after.st_size == before.st_size
    assert p.read_bytes()[:16] != data[:16]
    assert after.st_mtime_ns >= before.st_mtime_ns
