"""The blob path on real services: large uploads verified end to end, dedup, HTTP
sources, every bad input, reads with ranges and presigned URLs, two workers, the reaper
and deadlines, an S3 outage. (Kill -9 and resume: test_blob_resume.py; what the worker
refuses to read: test_worker_boundary.py.)

Local files here live in pytest's tmp dirs, outside every source root: the client spools
them (hard links into the stack's data dir) unless a test makes their directory a root.
The HTTP origins listen on 127.0.0.1, which a worker reaches only with LOCAL_ORIGINS
allowed."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import urlsplit

import pytest
import urllib3

from blobledger import connect
from blobledger.producers import blob_cli
from blobledger.infra import bootstrap
from blobledger.infra.s3 import make_s3_client
from blobledger.producers.client import Client
from blobledger.producers.reader import ByteRange, open_object_blob, presigned_get_url
from blobledger.schemas.errors import ValidationError

from .blob_support import (
    LOCAL_ORIGINS,
    MiB,
    Origin,
    TcpProxy,
    ThreadedWorker,
    make_file,
    open_multipart_uploads,
    sha256_file,
    wait_terminal,
)
from .support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(settings, projector):
    w = ThreadedWorker(settings, transfer_attempts=2, max_backoff=1.0)
    yield w
    w.stop()


@pytest.fixture
def web(settings):
    """Settings whose workers may fetch from the tests' local origins."""
    return settings.with_(source_allow_networks=LOCAL_ORIGINS)


@pytest.fixture
def origin(tmp_path):
    o = Origin(tmp_path)
    yield o
    o.close()


def _attach(client: Client, key: str, source: str, **kw):
    if not client.queries.list_objects(actor=client.actor, prefix=key).items:
        client.create(key)
    return client.attach_blob(key, source, **kw)


def test_large_upload_verified_end_to_end_then_dedup(settings, worker, tmp_path):
    path = tmp_path / "big.bin"
    sha = make_file(path, 210 * MiB + 123)
    with connect(settings, actor="alice") as alice:
        r = _attach(alice, "big/one", str(path))
        view = wait_terminal(alice, r.upload_id, timeout=300)
        assert (view.state, view.sha256, view.size, view.dedup) == (
            "stored",
            sha,
            210 * MiB + 123,
            False,
        )
        assert view.key == f"blobs/sha256/{sha[:2]}/{sha}"
        obj = alice.get("big/one")
        assert obj.blob.sha256 == sha and obj.pending_upload_id is None

        # read back through the client-facing reader: every byte, hash verified
        s3 = make_s3_client(settings)
        blob = open_object_blob(alice, "big/one", s3=s3)
        h = hashlib.sha256()
        with blob.reader as reader:
            while chunk := reader.read(8 * MiB):
                h.update(chunk)
        assert h.hexdigest() == sha and blob.reader.verified and blob.notice is None
        # the file was spooled for the worker; the entry goes once the upload is over
        assert settings.spool_dir is not None
        wait_for(
            lambda: not (settings.spool_dir / r.upload_id).exists(),
            timeout=10,
            what="the spool entry removed",
        )

        # `blobledger get -o`: streamed to a file, verified
        out = tmp_path / "copy.bin"
        assert (
            blob_cli.get_main(["big/one", "-o", str(out), "--actor", "alice"], settings=settings)
            == 0
        )
        assert sha256_file(out) == sha

        # a range, and a presigned URL that works without credentials
        part = open_object_blob(
            alice, "big/one", s3=s3, byte_range=ByteRange(MiB, 2 * MiB - 1)
        ).reader.read()
        with open(path, "rb") as f:
            f.seek(MiB)
            assert part == f.read(MiB)
        url = presigned_get_url(s3, settings.s3_bucket, view.key, expires=60)
        resp = urllib3.request("GET", url, headers={"Range": "bytes=0-99"})
        assert resp.status == 206 and len(resp.data) == 100

        # the same bytes again, for another object and from another path: dedup, 0 bytes sent
        other = tmp_path / "same.bin"
        other.write_bytes(path.read_bytes())
        r2 = _attach(alice, "big/two", str(other))
        v2 = wait_terminal(alice, r2.upload_id, timeout=120)
        assert (v2.state, v2.sha256, v2.dedup) == ("stored", sha, True)
        assert alice.get("big/two").blob.key == view.key
    assert open_multipart_uploads(settings) == []


def test_reupload_of_the_same_file_sends_nothing(settings, projector, tmp_path):
    # under a source root: the file is read in place, so the stat cache knows it again
    rooted = settings.with_(source_roots=str(tmp_path))
    path = tmp_path / "f.bin"
    sha = make_file(path, 40 * MiB)
    w = ThreadedWorker(rooted)
    try:
        with connect(rooted, actor="alice") as alice:
            first = wait_terminal(alice, _attach(alice, "re/a", str(path)).upload_id)
            assert alice.upload(first.upload_id).source == path.as_uri()  # not spooled
            t0 = time.monotonic()
            again = wait_terminal(alice, _attach(alice, "re/a", str(path)).upload_id)
            assert first.state == again.state == "stored" and again.dedup and again.sha256 == sha
            assert time.monotonic() - t0 < 10
    finally:
        w.stop()


def test_http_source_and_reading_while_a_newer_upload_is_pending(web, projector, origin, tmp_path):
    sha = make_file(tmp_path / "web.bin", 30 * MiB + 7)
    with connect(web, actor="alice") as alice:
        w = ThreadedWorker(web)
        try:
            r = _attach(alice, "web/a", f"{origin.url}/web.bin")
            view = wait_terminal(alice, r.upload_id)
            assert view.state == "stored" and view.sha256 == sha
        finally:
            w.stop()
        # no worker now: the next upload stays pending, readers keep the committed blob
        make_file(tmp_path / "web2.bin", MiB)
        pending = _attach(alice, "web/a", f"{origin.url}/web2.bin")
        assert alice.upload(pending.upload_id).state == "pending"
        blob = open_object_blob(alice, "web/a", s3=make_s3_client(web))
        assert blob.sha256 == sha and blob.pending_upload_id == pending.upload_id
        assert blob.notice and "pending" in blob.notice
        blob.reader.close()


def test_every_bad_input_is_compensated_with_its_reason(web, projector, origin, tmp_path):
    root = tmp_path / "root"
    (root / "subdir").mkdir(parents=True)
    s = web.with_(source_roots=str(root))
    good = tmp_path / "good.bin"
    good_sha = make_file(good, 6 * MiB)
    make_file(tmp_path / "half.bin", 6 * MiB)
    cases = {
        "missing": (str(tmp_path / "nope.bin"), {}, "source_not_found"),
        "missing_in_root": (str(root / "nope.bin"), {}, "source_not_found"),
        "directory": ((root / "subdir").as_uri(), {}, "source_not_regular"),
        "hash": (str(good), {"declared_sha256": "0" * 64}, "checksum_mismatch"),
        "size": (str(good), {"declared_size": 12345}, "declared_size_mismatch"),
        "http404": (f"{origin.url}/missing.bin", {}, "source_not_found"),
        "http500": (f"{origin.url}/500", {}, "retry_budget_exhausted"),
        "truncated": (f"{origin.url}/truncate/half.bin", {}, "truncated_source"),
    }
    worker = ThreadedWorker(s, transfer_attempts=2, max_backoff=1.0)
    try:
        with connect(s, actor="alice") as alice:
            uploads = {
                name: _attach(alice, f"bad/{name}", src, **kw).upload_id
                for name, (src, kw, _) in cases.items()
            }
            for name, (_, _, reason) in cases.items():
                view = wait_terminal(alice, uploads[name], timeout=120)
                assert (name, view.state, view.reason) == (name, "compensated", reason)
                assert alice.get(f"bad/{name}").blob is None
            assert origin.hits["/500"] >= 2  # retried before giving up
            # refused up front by the client: declared size over the limit, unsupported
            # source, a local path that is no regular file (it cannot be spooled)
            with pytest.raises(ValidationError):
                _attach(alice, "bad/limit", str(good), declared_size=s.max_blob_size + 1)
            with pytest.raises(ValidationError):
                _attach(alice, "bad/scheme", "ftp://example.com/x")
            with pytest.raises(ValidationError, match="not a regular file"):
                _attach(alice, "bad/dir", str(tmp_path))
    finally:
        worker.stop()
    # nothing uploaded stays around: no open multipart uploads, no staging objects
    assert open_multipart_uploads(s) == []
    s3 = make_s3_client(s)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s.s3_bucket).get("Contents", [])]
    assert (
        all(k.startswith("blobs/sha256/") for k in keys)
        and f"blobs/sha256/{good_sha[:2]}/{good_sha}" not in keys
    )


def test_size_over_the_limit_is_compensated(settings, projector, tmp_path):
    small = settings.with_(max_blob_size=5 * MiB)
    path = tmp_path / "big.bin"
    make_file(path, 6 * MiB)
    w = ThreadedWorker(small)
    try:
        with connect(small, actor="alice") as alice:
            view = wait_terminal(alice, _attach(alice, "limit/a", str(path)).upload_id)
            assert (view.state, view.reason) == ("compensated", "size_limit")
    finally:
        w.stop()


def test_two_workers_share_the_load(settings, projector, tmp_path):
    workers = [ThreadedWorker(settings), ThreadedWorker(settings)]
    try:
        with connect(settings, actor="alice") as alice:
            ids = []
            for i in range(12):
                path = tmp_path / f"f{i}.bin"
                make_file(path, 3 * MiB)
                ids.append(_attach(alice, f"share/{i}", str(path), wait=False).upload_id)
            views = [wait_terminal(alice, u) for u in ids]
            assert all(v.state == "stored" for v in views)
    finally:
        for w in workers:
            w.stop()
    handled = [w.worker.handled for w in workers]
    assert sum(handled) == 12 and all(h > 0 for h in handled), handled


def test_deadline_passed_before_start_and_reaper(settings, projector, tmp_path):
    quick = settings.with_(upload_deadline_seconds=1)
    path = tmp_path / "f.bin"
    make_file(path, MiB)
    with connect(quick, actor="alice") as alice:
        # the reaper compensates a pending upload past its deadline (no worker running)
        reaped = _attach(alice, "dl/reaped", str(path))
        time.sleep(1.5)
        reaper = bootstrap.reaper(quick)
        stale = reaper.s3.create_multipart_upload(
            Bucket=quick.s3_bucket, Key="blobs/sha256/ab/stale"
        )["UploadId"]
        try:
            report = reaper.run_once(multipart_older_than=0)
        finally:
            reaper.close()
        assert report.compensated >= 1 and report.aborted_multipart >= 1
        view = wait_terminal(alice, reaped.upload_id, timeout=30)
        assert (view.state, view.reason) == ("compensated", "timeout")
        assert all(u["UploadId"] != stale for u in open_multipart_uploads(quick))
        assert quick.spool_dir is not None and not (quick.spool_dir / reaped.upload_id).exists()

        # a worker that picks a command up after its deadline compensates it at once
        late = _attach(alice, "dl/late", str(path))
        time.sleep(1.5)
        w = ThreadedWorker(quick)
        try:
            view = wait_terminal(alice, late.upload_id, timeout=60)
        finally:
            w.stop()
        assert (view.state, view.reason) == ("compensated", "timeout")


def test_s3_outage_retries_while_metadata_keeps_its_latency(settings, projector, tmp_path):
    target = urlsplit(settings.s3_url)
    proxy = TcpProxy(target.hostname, target.port)
    via_proxy = settings.with_(s3_endpoint=f"http://127.0.0.1:{proxy.port}")
    path = tmp_path / "f.bin"
    sha = make_file(path, 20 * MiB)
    w = ThreadedWorker(via_proxy, transfer_attempts=30, max_backoff=2.0)
    try:
        with connect(settings, actor="alice") as alice:

            def metadata_latency() -> float:
                samples = []
                for i in range(10):
                    t0 = time.monotonic()
                    alice.update("outage/obj", {"n": i})
                    samples.append(time.monotonic() - t0)
                return max(samples)

            alice.create("outage/obj")
            assert w.worker.assigned.wait(60)
            before = metadata_latency()
            proxy.cut()
            r = _attach(alice, "outage/blob", str(path))
            wait_for(
                lambda: w.worker.transfer.breaker.state.value != "closed",
                timeout=60,
                what="the S3 breaker to open",
            )
            during = metadata_latency()
            assert alice.upload(r.upload_id).state == "pending"
            proxy.restore()
            view = wait_terminal(alice, r.upload_id, timeout=120)
            assert view.state == "stored" and view.sha256 == sha
            assert during <= max(3 * before, 1.0), (before, during)
    finally:
        w.stop()
        proxy.close()


def test_put_cli_follows_the_upload_to_completion(settings, worker, tmp_path, capsys):
    path = tmp_path / "cli.bin"
    sha = make_file(path, 60 * MiB)
    with connect(settings, actor="alice") as alice:
        alice.create("cli/a")
    assert worker.worker.assigned.wait(60)
    code = blob_cli.put_main(["cli/a", str(path), "--actor", "alice"], settings=settings)
    out, err = capsys.readouterr()
    assert code == 0 and sha in out and "stored" in out
    assert "MB/s" in err  # the progress bar, fed by the worker's progress topic
    with pytest.raises(ValidationError, match="does not exist"):  # refused before publishing
        blob_cli.put_main(
            ["cli/a", str(tmp_path / "missing"), "--actor", "alice", "--json"], settings=settings
        )
