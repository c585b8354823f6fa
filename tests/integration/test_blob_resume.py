"""A worker SIGKILLed mid-upload: the redelivered command resumes the multipart upload
(verifying the parts already there) and no multipart upload stays open."""

from __future__ import annotations

import json
import time

import pytest

from blobledger import connect
from blobledger.infra.s3 import make_s3_client

from .blob_support import MiB, make_file, open_multipart_uploads, wait_terminal
from .support import Proc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _private_data_dir(settings, data_dir):
    """The worker's own data dir (its on-disk hash cache, the spool the client fills for
    it), with the stack's keys still used for signing and verifying."""
    return settings.with_(data_dir=data_dir, keys_dir=str(settings.keys_path))


def _parts_done(settings) -> int:
    s3 = make_s3_client(settings)
    uploads = open_multipart_uploads(settings)
    if not uploads:
        return 0
    u = uploads[0]
    return len(
        s3.list_parts(Bucket=settings.s3_bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
            "Parts", []
        )
    )


def _assigned(log_path) -> bool:
    """The worker process has joined its group and holds partitions (its JSON log says so)."""
    try:
        lines = log_path.read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "worker.assigned" and entry.get("partitions"):
                return True
    return False


def test_worker_killed_mid_upload_resumes_on_redelivery(settings, projector, tmp_path):
    # small parts and few in flight: the upload takes long enough to be caught mid-way
    s = _private_data_dir(
        settings.with_(min_part_size=5 * MiB, max_in_flight_parts=2), tmp_path / "w"
    )
    path = tmp_path / "big.bin"
    sha = make_file(path, 300 * MiB)
    first = Proc(s, ["worker"], str(tmp_path / "worker1.log"))
    try:
        with connect(s, actor="alice") as alice:
            alice.create("resume/a")
            r = alice.attach_blob("resume/a", str(path))
            wait_for(lambda: _parts_done(s) >= 4, timeout=120, interval=0.05, what="parts uploaded")
            first.kill()
            assert len(open_multipart_uploads(s)) == 1  # left open by the dead worker
            assert alice.upload(r.upload_id).state == "pending"

            second = Proc(s, ["worker"], str(tmp_path / "worker2.log"))
            try:
                view = wait_terminal(alice, r.upload_id, timeout=300)
            finally:
                second.stop()
            assert (view.state, view.sha256, view.size) == ("stored", sha, 300 * MiB)
    finally:
        first.stop()
    assert open_multipart_uploads(s) == []
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker2.log").read_text().splitlines()
        if line.startswith("{")
    ]
    resumed = [x for x in lines if x.get("event") == "multipart.resumed"]
    stored = [x for x in lines if x.get("event") == "upload.stored"]
    assert resumed and resumed[0]["parts"] >= 4
    assert stored and stored[0]["resumed_parts"] >= 4 and stored[0]["bytes_sent"] < 300 * MiB
    # the handling lines carry the command's ids
    assert all(x.get("event_id") and x.get("correlation_id") for x in resumed + stored)


def test_killed_worker_and_a_permanent_failure_leave_no_open_upload_after_the_reaper(
    settings, projector, tmp_path
):
    """If nobody redelivers (the command was compensated meanwhile), the reaper aborts the
    abandoned multipart upload."""
    from blobledger.infra import bootstrap

    deadline_s = 10
    s = _private_data_dir(
        settings.with_(
            min_part_size=5 * MiB, max_in_flight_parts=2, upload_deadline_seconds=deadline_s
        ),
        tmp_path / "w",
    )
    path = tmp_path / "big.bin"
    make_file(path, 200 * MiB)
    worker = Proc(s, ["worker"], str(tmp_path / "worker.log"))
    try:
        # the short deadline runs from the attach: only attach once the worker is ready,
        # or a slow group join on a loaded machine eats it before any part is sent
        wait_for(lambda: _assigned(tmp_path / "worker.log"), timeout=60, what="worker assigned")
        with connect(s, actor="alice") as alice:
            alice.create("resume/b")
            attached_at = time.monotonic()
            r = alice.attach_blob("resume/b", str(path))
            wait_for(
                lambda: _parts_done(s) >= 2,
                timeout=deadline_s,
                interval=0.05,
                what="parts uploaded",
            )
            worker.kill()
            time.sleep(
                max(0.0, attached_at + deadline_s + 0.5 - time.monotonic())
            )  # past the deadline
            reaper = bootstrap.reaper(s)
            try:
                report = reaper.run_once(multipart_older_than=0)
            finally:
                reaper.close()
            assert report.compensated == 1 and report.aborted_multipart == 1
            view = wait_terminal(alice, r.upload_id, timeout=30)
            assert (view.state, view.reason) == ("compensated", "timeout")
    finally:
        worker.stop()
    assert open_multipart_uploads(s) == []
