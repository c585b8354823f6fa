"""Progress as ``put`` and ``replay`` show it (infra/progress.py) and as the worker reports
it (blob_worker/progress.py): plain lines off a terminal, rates over a window, and upload
reports that count bytes S3 acknowledged, part by part."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

from blobledger.blob_worker.progress import Meter
from blobledger.blob_worker.transfer_types import Progress
from blobledger.infra.progress import (
    JsonLines,
    PlainLines,
    ProgressDisplay,
    RateWindow,
    RichBar,
    open_display,
    progress_mode,
)

from .worker_support import MiB, Rig, make_rig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- the rate ----------------------------------------------------------------------------------
def test_the_rate_is_the_current_one_and_a_stall_brings_it_down() -> None:
    w = RateWindow(window=5.0)
    w.reset(0, 0.0)
    for t in range(1, 11):  # 1 MB a second for 10 s, then 10 MB a second
        w.add(t * 1_000_000, float(t))
    assert w.rate(10.0) == 1_000_000
    w.add(60_000_000, 15.0)
    assert w.rate(15.0) == 10_000_000  # the last 5 s, not the average since 0
    assert w.rate(30.0) == 0.0  # nothing moved within the window


# --- plain lines -------------------------------------------------------------------------------
def test_off_a_terminal_lines_are_periodic_and_plain_and_end_with_a_final_line() -> None:
    clock, out = Clock(), io.StringIO()
    d = PlainLines("put", "bytes", stream=out, phase="waiting", clock=clock)
    d.update(0, 40 * MiB, phase="uploading")
    for _ in range(40):  # a report every 0.25 s for 10 s, 1 MiB each
        clock.now += 0.25
        d.update(d.done + MiB)
    d.finish(40 * MiB, 40 * MiB, phase="stored")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 6  # one every 2 s, then the final one
    assert lines[0] == "put: uploading 8.0/40.0 MiB (20%) at 4.2 MB/s, ETA 0:00:08"
    assert lines[-1] == "put: stored 40.0/40.0 MiB in 10.0s (4.2 MB/s)"


def test_a_stall_still_prints_a_line_every_interval_with_a_falling_rate() -> None:
    clock, out = Clock(), io.StringIO()
    d = PlainLines("put", "bytes", stream=out, phase="waiting", clock=clock)
    clock.now += 0.5
    d.tick()
    assert out.getvalue() == ""  # not due yet
    clock.now += 2
    d.tick()
    assert out.getvalue() == "put: waiting\n"  # nothing counted yet: just the phase
    d.update(10 * MiB, 20 * MiB, phase="uploading")
    clock.now += 3
    d.update(20 * MiB)
    for _ in range(8):
        clock.now += 1
        d.tick()
    rates = [float(line.split(" at ")[1].split()[0]) for line in out.getvalue().splitlines()[1:]]
    assert len(rates) >= 3 and rates[0] > 0 and rates == sorted(rates, reverse=True)
    assert rates[-1] == 0.0


def test_events_are_counted_in_events_per_second() -> None:
    clock, out = Clock(), io.StringIO()
    d = PlainLines("replay", "events", stream=out, clock=clock)
    d.update(0, 10_000, phase="folding")
    clock.now += 2
    d.update(4_000)
    clock.now += 1
    d.finish(9_000, 9_000, phase="swapped")
    assert out.getvalue().splitlines() == [
        "replay: folding 4,000/10,000 events (40%) at 2,000 events/s, ETA 0:00:03",
        "replay: swapped 9,000/9,000 events in 3.0s (3,000 events/s)",
    ]


def test_json_lines_are_one_object_each_the_last_one_final() -> None:
    clock, out = Clock(), io.StringIO()
    d = JsonLines("put", "bytes", stream=out, clock=clock)
    d.update(0, 4 * MiB, phase="uploading")
    for _ in range(4):
        clock.now += 1
        d.update(d.done + MiB)
    d.finish(phase="stored", note=" (dedup: no bytes sent)")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["done"] for x in lines] == [MiB, 2 * MiB, 3 * MiB, 4 * MiB, 4 * MiB]
    assert all(x["rate"] > 0 for x in lines) and lines[-1]["final"] is True
    assert lines[-1]["phase"] == "stored" and lines[-1]["note"] == "dedup: no bytes sent"


def test_the_mode_follows_the_flags_and_the_stream() -> None:
    assert progress_mode(None) == "auto" and progress_mode(None, as_json=True) == "none"
    assert progress_mode("json", as_json=True) == "json"
    assert type(open_display("put", "bytes", "none", stream=io.StringIO())) is ProgressDisplay
    assert type(open_display("put", "bytes", "auto", stream=io.StringIO())) is PlainLines
    tty = Tty()
    bar = open_display("put", "bytes", "auto", stream=tty)
    assert isinstance(bar, RichBar)
    with bar:
        bar.update(MiB, 2 * MiB, phase="uploading")
        bar.finish(2 * MiB, phase="stored")
    assert "put stored" in tty.getvalue()


def test_a_silent_display_writes_nothing() -> None:
    out = io.StringIO()
    with open_display("replay", "events", "none", stream=out) as d:
        d.update(5, 10, phase="folding")
        d.tick()
        d.finish(10, 10, phase="swapped")
    assert out.getvalue() == ""


# --- the worker's meter ------------------------------------------------------------------------
def test_the_meter_holds_back_a_burst_and_reports_its_end_when_the_interval_is_up() -> None:
    seen: list[Progress] = []
    arrived = threading.Event()

    def sink(p: Progress) -> None:
        seen.append(p)
        if p.bytes_done == 8 * MiB:
            arrived.set()

    m = Meter("u1", sink, min_interval=0.2)
    m.restart("uploading", 8 * MiB)
    for _ in range(8):  # eight parts acknowledged at once
        m.add(MiB)
    assert [p.bytes_done for p in seen] == [0]  # the interval is not up
    assert arrived.wait(2)  # the held-back report follows on its own
    assert [p.bytes_done for p in seen] == [0, 8 * MiB]
    m.final("stored", done=8 * MiB)
    m.add(MiB)  # nothing follows the final report
    assert [(p.state, p.bytes_done) for p in seen[2:]] == [("stored", 8 * MiB)]


# --- the worker, on the twins ------------------------------------------------------------------
def test_the_worker_reports_bytes_stored_part_by_part(tmp_path: Path) -> None:
    rig_iter = make_rig(tmp_path, min_part_size=str(5 * MiB), max_in_flight_parts="1")
    rig: Rig = next(rig_iter)
    rig.store.part_delay = 0.3  # each acknowledgement lands past the 0.25 s report limit
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * (20 * MiB // 256))
    command = rig.request(path.as_uri())
    assert rig.run(rig.worker()) == 1
    reports: list[dict[str, Any]] = [
        json.loads(m.value() or b"")
        for m in rig.broker.messages(rig.settings.progress_topic)
        if m.key() == command.upload_id.encode()
    ]
    states = [r["state"] for r in reports]
    assert states.index("hashing") < states.index("dedup") < states.index("uploading")
    assert states[-3:] == ["completing", "stored", "stored"]
    uploading = [r for r in reports if r["state"] == "uploading"]
    assert [r["bytes_done"] for r in uploading] == [i * 5 * MiB for i in range(5)]
    assert all(r["total"] == 20 * MiB for r in uploading)
    assert all(r["mbps"] > 0 for r in uploading[1:])
    assert reports[-1] == {
        "upload_id": command.upload_id,
        "state": "stored",
        "bytes_done": 20 * MiB,
        "total": 20 * MiB,
        "dedup": False,
    }
    next(rig_iter, None)
