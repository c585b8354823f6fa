"""A source cannot hold a worker: several transfers at once, one per object, committed in
log order, cancelled by a revoke or a stop without waiting on a stuck read or S3 call.

The building blocks first (pure: the commit watermark, the per-object lanes; the cancel
hooks and the daemon part pool), then the Worker on the twins (:mod:`.worker_support`)
with an HTTP origin that stalls on cue. The worker tests failed before the worker ran
commands concurrently: it ran one at a time, waiting for a stalled read to time out."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobledger.blob_worker.cancel import Cancel
from blobledger.blob_worker.daemonpool import DaemonPool
from blobledger.blob_worker.inflight import Watermarks
from blobledger.blob_worker.lanes import Lanes
from blobledger.blob_worker.outcomes import outcome_event_id
from blobledger.blob_worker.transfer import content_key
from blobledger.schemas.events import BlobStored, BlobUploadFailed, now_us

from .worker_support import MiB, Background, Origin, Rig, make_rig, wait_until


# --- the commit watermark --------------------------------------------------------------------
def test_the_commit_point_stays_below_the_lowest_unfinished_offset() -> None:
    marks: Watermarks[str, str] = Watermarks()
    for offset, item in [(3, "a"), (4, "b"), (7, "c")]:  # gaps: other records
        marks.take("p", offset, item)
    marks.finish("p", 4)
    marks.finish("p", 7)
    assert marks.advance("p") is None  # 3 runs: nothing past it may be committed
    marks.finish("p", 3)
    moved = marks.advance("p")
    assert moved is not None and (moved.offset, moved.released) == (8, ("a", "b", "c"))
    assert marks.advance("p") is None  # no move, no commit
    marks.take("p", 9, "d")  # offset 8 was no command (a gap): up to 9 is done
    marks.take("p", 10, "e")
    marks.finish("p", 10)
    moved = marks.advance("p")
    assert moved is not None and (moved.offset, moved.released) == (9, ())
    assert marks.drop("p") == ("d",)  # revoked: the unfinished go to the next owner
    assert not marks.seen("p", 9) and marks.advance("p") is None


def test_offsets_come_in_order_and_a_seen_one_is_recognized() -> None:
    marks: Watermarks[int, None] = Watermarks()
    marks.take(0, 5, None)
    assert marks.seen(0, 5) and marks.seen(0, 2) and not marks.seen(0, 6)
    with pytest.raises(ValueError):
        marks.take(0, 5, None)


@given(st.data())
def test_the_watermark_never_passes_an_unfinished_command(data: st.DataObject) -> None:
    """Any order of finishing: every commit point is at or below every unfinished
    offset, commit points only grow, each item is released once and only after its
    command finished, and once all are done the point is one past the last."""
    gaps = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=25))
    offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    marks: Watermarks[str, int] = Watermarks()
    unfinished: set[int] = set()
    finished: set[int] = set()
    released: list[int] = []
    last = -1
    pending = list(offsets)
    while pending or unfinished:
        steps = (["take"] if pending else []) + (["finish"] if unfinished else [])
        if data.draw(st.sampled_from(steps)) == "take":
            offset = pending.pop(0)
            marks.take("p", offset, offset)
            unfinished.add(offset)
        else:
            offset = data.draw(st.sampled_from(sorted(unfinished)))
            marks.finish("p", offset)
            unfinished.remove(offset)
            finished.add(offset)
        moved = marks.advance("p")
        if moved is not None:
            assert moved.offset > last
            assert all(moved.offset <= u for u in unfinished)
            assert set(moved.released) <= finished
            assert all(r < moved.offset for r in moved.released)
            released += moved.released
            last = moved.offset
    assert last == offsets[-1] + 1
    assert released == offsets  # each once, in offset order


# --- one command at a time per object -------------------------------------------------------
def test_a_busy_object_keeps_its_commands_in_order() -> None:
    lanes: Lanes[str, int] = Lanes()
    assert lanes.admit("x", 1) and lanes.admit("y", 2)
    assert not lanes.admit("x", 3) and not lanes.admit("x", 4)
    assert lanes.waiting == 2
    assert lanes.release("x") == 3  # 3 runs now: x stays busy
    assert lanes.release("y") is None and not lanes.busy("y")
    assert lanes.discard(lambda i: i == 4) == [4]
    assert lanes.release("x") is None and lanes.waiting == 0 and not lanes.busy("x")


# --- cancel hooks and the part pool ----------------------------------------------------------
def test_a_cancel_runs_each_hook_once_even_one_registered_late() -> None:
    cancel = Cancel()
    calls: list[str] = []
    cancel.on_cancel(lambda: calls.append("a"))
    forget = cancel.on_cancel(lambda: calls.append("gone"))
    cancel.on_cancel(lambda: 1 / 0)  # a failing hook stops no other
    forget()
    cancel.set()
    cancel.set()
    cancel.on_cancel(lambda: calls.append("late"))
    assert calls == ["a", "late"] and cancel.is_set()


def test_the_part_pool_runs_work_and_never_waits_for_a_stuck_thread() -> None:
    pool = DaemonPool(2, thread_name_prefix="t")
    stuck = threading.Event()
    assert pool.submit(lambda x: x * 2, 21).result(5) == 42
    pool.submit(stuck.wait, 30)
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("t_"))
    t0 = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 1
    with pytest.raises(RuntimeError):
        pool.submit(print)
    stuck.set()


# --- the worker -------------------------------------------------------------------------------
@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # one partition: every command shares one commit point; 5 MiB parts (S3's minimum)
    yield from make_rig(tmp_path, partitions="1", min_part_size=str(5 * MiB))


def _file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


def test_a_stalled_source_does_not_delay_commands_on_other_objects(
    rig: Rig, origin: Origin, tmp_path: Path
) -> None:
    body = b"slow origin " * 1000
    stalled = origin.route("/stalled", body, stall_after=100)
    slow = rig.request(stalled, key="a/slow")
    fast = rig.request(_file(tmp_path, "fast.bin", b"fast" * 1000), key="b/fast")
    worker = Background(rig.worker())
    try:
        assert isinstance(rig.wait_outcome(fast, timeout=5), BlobStored)
        assert rig.outcome_of(slow) is None  # still stalled
        # one partition: the commit stays below the unfinished command before it
        assert rig.committed(fast) in (None, rig.offset_of(slow))
        origin.routes["/stalled"].release.set()
        event = rig.wait_outcome(slow)
        assert isinstance(event, BlobStored) and event.sha256 == hashlib.sha256(body).hexdigest()
        wait_until("the commit", lambda: rig.committed(fast) == rig.offset_of(fast) + 1)
    finally:
        worker.stop()
    assert worker.worker.handled == 2


def test_commands_for_one_object_run_one_after_another(
    rig: Rig, origin: Origin, tmp_path: Path
) -> None:
    first = rig.request(origin.route("/first", b"v1" * 500, stall_after=10), key="same/obj")
    second = rig.request(_file(tmp_path, "v2.bin", b"v2" * 500), key="same/obj")
    other = rig.request(_file(tmp_path, "o.bin", b"other" * 100), key="other/obj")
    worker = Background(rig.worker())
    try:
        assert isinstance(rig.wait_outcome(other, timeout=5), BlobStored)
        time.sleep(0.5)
        assert rig.outcome_of(second) is None  # waits behind the first, though its file is ready
        origin.routes["/first"].release.set()
        rig.wait_outcome(second)
    finally:
        worker.stop()
    order = [e.upload_id for e in rig.outcomes() if isinstance(e, BlobStored)]
    assert order == [other.upload_id, first.upload_id, second.upload_id]


def test_transfers_in_flight_are_bounded_and_the_rest_wait_in_the_log(
    rig: Rig, origin: Origin
) -> None:
    commands = [
        rig.request(origin.route(f"/s{i}", b"x" * 1000, stall_after=10), key=f"obj/{i}")
        for i in range(3)
    ]
    worker = Background(rig.worker(concurrency=2))
    try:
        wait_until("two transfers reading", lambda: origin.active() == 2)
        time.sleep(0.5)
        assert origin.active() == 2 and origin.routes["/s2"].hits == 0
        assert rig.committed(commands[0]) is None
        origin.routes["/s0"].release.set()
        wait_until("the third transfer", lambda: origin.routes["/s2"].hits == 1)
        for i in (1, 2):
            origin.routes[f"/s{i}"].release.set()
        for c in commands:
            assert isinstance(rig.wait_outcome(c), BlobStored)
        wait_until("every offset committed", lambda: rig.committed(commands[0]) == 3)
    finally:
        worker.stop()


def test_stop_cancels_a_stalled_read_and_leaves_a_stuck_s3_call_behind(
    rig: Rig, origin: Origin, tmp_path: Path
) -> None:
    """One transfer blocked reading its source, another in an S3 call that will not
    return for 30 s: stop() still ends the worker within its grace period, commits
    neither command, and leaves the multipart upload open; the next worker finishes
    both, resuming the upload."""
    data = bytes(range(256)) * (48 * 1024)  # 12 MiB: three 5 MiB parts
    body = b"stalled body " * 10_000
    stalled = rig.request(origin.route("/stalled", body, stall_after=1000), key="a/stalled")
    stuck = rig.request(_file(tmp_path, "big.bin", data), key="b/stuck")
    rig.store.part_delay = 30.0
    worker = Background(rig.worker(stop_grace=1.0))
    wait_until("both transfers blocked", lambda: origin.active() == 1 and rig.store.in_flight)
    took = worker.stop()
    assert took < 3, f"stop took {took:.1f}s"
    assert rig.outcomes() == [] and rig.committed(stalled) is None
    (upload,) = rig.store.uploads.values()  # open, for a resume
    assert upload["Key"] == content_key(hashlib.sha256(data).hexdigest())

    rig.store.part_delay = 0.0
    origin.routes["/stalled"].release.set()
    rig.run(rig.worker(), max_commands=2)
    assert isinstance(rig.outcome_of(stuck), BlobStored)
    assert isinstance(rig.outcome_of(stalled), BlobStored)
    assert rig.committed(stuck) == 2


def test_a_revoked_partition_cancels_its_transfer_for_the_next_owner_to_resume(
    rig: Rig, origin: Origin
) -> None:
    body = bytes(range(256)) * (40 * 1024)  # 10 MiB: a 5 MiB part goes before the stall
    command = rig.request(origin.route("/big", body, stall_after=6 * MiB))
    worker = Background(rig.worker())
    try:
        wait_until("a part uploaded", lambda: rig.store.calls.count("upload_part") == 1)
        rig.broker.rebalance(rig.settings.worker_group)  # revoked, then assigned again
        # redelivered, it runs again only once the cancelled transfer is over (one lane per
        # object): the stalled read was cut off, not waited out (30 s)
        wait_until("the command redelivered", lambda: origin.routes["/big"].hits == 2, 5)
        assert rig.outcome_of(command) is None and rig.committed(command) is None
        assert len(rig.store.uploads) == 1  # left open, not aborted
        origin.routes["/big"].release.set()
        event = rig.wait_outcome(command)
    finally:
        worker.stop()
    assert isinstance(event, BlobStored) and event.sha256 == hashlib.sha256(body).hexdigest()
    assert rig.store.uploads == {} and rig.store.calls.count("upload_part") == 2  # resumed
    assert rig.committed(command) == 1


def test_a_transfer_stalled_past_its_deadline_is_compensated_at_the_deadline(
    rig: Rig, origin: Origin
) -> None:
    url = origin.route("/stalled", b"x" * 1000, stall_after=10)
    command = rig.request(url, deadline_us=now_us() + 1_500_000)
    t0 = time.monotonic()
    assert rig.run(rig.worker()) == 1
    assert time.monotonic() - t0 < 5  # the read timeout is 30 s
    event = rig.outcome_of(command)
    assert isinstance(event, BlobUploadFailed) and event.reason == "timeout"
    assert event.event_id == outcome_event_id(command.upload_id, "failed")


def test_a_dripping_source_is_compensated_as_too_slow(tmp_path: Path, origin: Origin) -> None:
    url = origin.route("/drip", b"y" * 10_000, drip=0.1)
    for rig in make_rig(tmp_path, http_timeout_seconds="0.5", http_min_bytes_per_second="1024"):
        command = rig.request(url)
        assert rig.run(rig.worker()) == 1
        event = rig.outcome_of(command)
        assert isinstance(event, BlobUploadFailed) and event.reason == "source_timeout"
        assert "too slow" in event.detail
