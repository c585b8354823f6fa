"""Each upload strategy on its own, against the verifying in-memory S3 (tests/unit/fake_s3.py):
which one a source gets, what each writes, and that failure cleanups undo exactly what a
run left open."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blobledger.blob_worker.cleanups import FailureCleanups
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.hashing import b64_crc
from blobledger.blob_worker.multipart import MultipartUpload
from blobledger.blob_worker.planning import PartPlan, plan_parts
from blobledger.blob_worker.progress import Meter
from blobledger.blob_worker.promotion import ServerSideCopy
from blobledger.blob_worker.s3calls import S3Calls
from blobledger.blob_worker.sources import LocalFileSource, Source
from blobledger.blob_worker.strategies import (
    BufferedStream,
    HashFirstFile,
    StreamedFile,
    choose_strategy,
)
from blobledger.blob_worker.transfer import Transfer, TransferCancelled
from blobledger.blob_worker.transfer_types import (
    UploadSpec,
    check_declared_size,
    content_key,
    staging_key,
)
from blobledger.blob_worker.upload_job import UploadJob
from blobledger.infra.retry import CircuitBreaker
from blobledger.schemas.errors import BlobledgerError, PermanentError
from tests.unit.fake_s3 import FakeS3, client_error

from tests.unit.transfer_support import MiB, OPTS, fast_retries  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(3) as p:
        yield p


class BytesSource:
    """A sequential source (stands in for HTTP)."""

    def __init__(self, data: bytes, size: int | None) -> None:
        self.uri, self.size, self._data, self._pos = "http://fake/blob", size, data, 0

    def readinto(self, buf: memoryview) -> int:
        chunk = self._data[self._pos : self._pos + len(buf)]
        buf[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        pass


def _job(
    s3: FakeS3,
    pool: ThreadPoolExecutor,
    spec: UploadSpec,
    *,
    cache: HashCache | None = None,
    **opts: Any,
) -> UploadJob:
    o = dataclasses.replace(OPTS, **opts)
    calls = S3Calls(
        s3, o.bucket, attempts=o.retry_attempts, breaker=CircuitBreaker("s3", failure_threshold=100)
    )
    return UploadJob(
        spec,
        o,
        calls=calls,
        pool=pool,
        cancel=threading.Event(),
        meter=Meter(spec.upload_id, None),
        promoter=ServerSideCopy(calls, max_blob_size=o.max_blob_size),
        cache=cache,
    )


def _plan(job: UploadJob, size: int | None) -> PartPlan:
    return plan_parts(size, min_part_size=job.opts.min_part_size, max_blob_size=OPTS.max_blob_size)


def _file(tmp_path: Path, size: int, name: str = "blob.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


# --- which strategy -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, mode, declared, expected",
    [
        (12 * MiB, "hash_first", None, HashFirstFile),
        (12 * MiB, "stream", None, StreamedFile),
        (1000, "stream", None, HashFirstFile),  # one part: nothing to gain from one pass
        (12 * MiB, "stream", "a" * 64, HashFirstFile),  # a declared hash goes to its key
    ],
)
def test_local_files_get_a_file_strategy(
    tmp_path: Path,
    pool: ThreadPoolExecutor,
    size: int,
    mode: str,
    declared: str | None,
    expected: type,
) -> None:
    path, _ = _file(tmp_path, size)
    job = _job(FakeS3(), pool, UploadSpec("u1", str(path), declared), local_files=mode)
    src = LocalFileSource(str(path), str(path), [str(tmp_path)])
    try:
        assert type(choose_strategy(job, src, _plan(job, size))) is expected
    finally:
        src.close()


def test_any_other_source_is_a_buffered_stream(pool: ThreadPoolExecutor) -> None:
    job = _job(FakeS3(), pool, UploadSpec("u1", "http://fake/blob"), local_files="stream")
    src: Source = BytesSource(b"x", None)
    assert type(choose_strategy(job, src, _plan(job, None))) is BufferedStream
    with pytest.raises(TypeError):
        HashFirstFile(job, src, _plan(job, None))


# --- each strategy --------------------------------------------------------------------------
def test_hash_first_file_goes_straight_to_its_content_key(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    path, data = _file(tmp_path, 12 * MiB + 1)
    s3 = FakeS3()
    job = _job(s3, pool, UploadSpec("u1", str(path)))
    src = LocalFileSource(str(path), str(path), [str(tmp_path)])
    try:
        r = HashFirstFile(job, src, _plan(job, len(data))).run()
    finally:
        src.close()
    sha = hashlib.sha256(data).hexdigest()
    assert (r.key, r.sha256, r.part_count, r.bytes_sent) == (content_key(sha), sha, 3, len(data))
    assert s3.objects == {r.key: data} and "copy_object" not in s3.calls


def test_streamed_file_stages_then_promotes(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    path, data = _file(tmp_path, 12 * MiB + 1)
    s3, cache = FakeS3(), HashCache()
    job = _job(s3, pool, UploadSpec("u1", str(path)), cache=cache, local_files="stream")
    src = LocalFileSource(str(path), str(path), [str(tmp_path)])
    try:
        r = StreamedFile(job, src, _plan(job, len(data))).run()
        assert cache.get(src.identity) == r.sha256
    finally:
        src.close()
    assert s3.objects == {content_key(hashlib.sha256(data).hexdigest()): data}
    assert "copy_object" in s3.calls and not s3.uploads and r.part_count == 3


@pytest.mark.parametrize("size", [3 * MiB, 13 * MiB])  # one PUT, multipart
def test_buffered_stream_without_a_hash_is_staged_and_promoted(
    pool: ThreadPoolExecutor, size: int
) -> None:
    data = os.urandom(size)
    s3 = FakeS3()
    job = _job(s3, pool, UploadSpec("u1", "http://fake/blob"))
    r = BufferedStream(job, BytesSource(data, None), _plan(job, None)).run()
    assert s3.objects == {r.key: data} and r.key == content_key(hashlib.sha256(data).hexdigest())
    assert not s3.uploads and r.bytes_sent == size


def test_buffered_stream_longer_than_its_known_size(pool: ThreadPoolExecutor) -> None:
    data = os.urandom(6 * MiB)
    s3 = FakeS3()
    job = _job(s3, pool, UploadSpec("u1", "http://fake/blob"))
    with pytest.raises(UploadFailure) as e:
        BufferedStream(job, BytesSource(data, 5 * MiB), _plan(job, 5 * MiB)).run()
    assert e.value.reason == "declared_size_mismatch" and not s3.objects


# --- failure cleanups -----------------------------------------------------------------------
def _transfer(s3: FakeS3) -> Transfer:
    return Transfer(s3, OPTS, breaker=CircuitBreaker("s3", failure_threshold=100))


def test_a_failed_completion_aborts_the_upload_it_created(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    s3 = FakeS3()
    s3.fail["complete_multipart_upload"] = [
        client_error("AccessDenied", 403, "CompleteMultipartUpload")
    ]
    with pytest.raises(PermanentError):
        _transfer(s3).run(UploadSpec("u1", str(path)))
    assert not s3.uploads and s3.calls.count("abort_multipart_upload") == 1


def test_an_adopted_upload_is_aborted_when_listing_its_parts_fails(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 11 * MiB)
    s3 = FakeS3()
    s3.create_multipart_upload(Bucket="bucket", Key=content_key(hashlib.sha256(data).hexdigest()))
    s3.fail["list_parts"] = [client_error("AccessDenied", 403, "ListParts")]
    with pytest.raises(PermanentError):
        _transfer(s3).run(UploadSpec("u1", str(path)))
    assert not s3.uploads


def test_a_staged_object_is_deleted_when_promotion_fails() -> None:
    class Refusing:
        def promote(self, bucket: str, src: str, dst: str, size: int) -> None:
            raise PermanentError("no")

    data = os.urandom(6 * MiB)
    s3 = FakeS3()
    t = _transfer(s3)
    t.promoter = Refusing()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "blobledger.blob_worker.transfer.open_source", lambda uri, **kw: BytesSource(data, None)
        )
        with pytest.raises(PermanentError):
            t.run(UploadSpec("u1", "http://fake/blob"))
    assert not s3.objects and not s3.uploads  # the completed staging object is gone too


def test_cancel_leaves_the_open_upload_for_a_resume(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    cancel = threading.Event()

    class CancelAfterCreate(FakeS3):
        def create_multipart_upload(self, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
            r = super().create_multipart_upload(Bucket=Bucket, Key=Key, **kw)
            cancel.set()
            return r

    s3 = CancelAfterCreate()
    with pytest.raises(TransferCancelled) as e:
        _transfer(s3).run(UploadSpec("u1", str(path)), cancel=cancel)
    (uid, up), *others = s3.uploads.items()
    assert not others and (e.value.key, e.value.multipart_id) == (up["Key"], uid)
    assert "abort_multipart_upload" not in s3.calls


def test_cleanups_run_newest_first_skip_dropped_ones_and_survive_failures() -> None:
    ran: list[str] = []
    cleanups = FailureCleanups()

    def failing() -> None:
        ran.append("failing")
        raise BlobledgerError("gone")

    cleanups.add("a", lambda: ran.append("a"))
    drop_b = cleanups.add("b", lambda: ran.append("b"))
    cleanups.add("failing", failing)
    cleanups.add("c", lambda: ran.append("c"))
    drop_b()
    cleanups.run()
    cleanups.run()  # each step runs once
    assert ran == ["c", "failing", "a"]


def test_completing_drops_the_abort(pool: ThreadPoolExecutor) -> None:
    s3 = FakeS3()
    job = _job(s3, pool, UploadSpec("u1", "http://fake/blob"))
    upload = MultipartUpload.open(
        job.calls, staging_key("u1"), cancel=job.cancel, cleanups=job.cleanups
    )
    crc = b64_crc(zlib.crc32(b"abc"))
    part = upload.upload_part(1, 3, crc, body=lambda: b"abc", md5=lambda: "")
    upload.complete([part], 3)
    job.cleanups.run()
    assert not upload.is_open and "abort_multipart_upload" not in s3.calls


# --- the declared-size check ------------------------------------------------------------------
@pytest.mark.parametrize(
    "declared, actual, at_least, ok",
    [
        (None, 5, False, True),
        (5, 5, False, True),
        (5, 4, False, False),
        (5, 6, False, False),
        (5, 4, True, True),  # a stream read so far may still reach it
        (5, 5, True, True),
        (5, 6, True, False),
    ],
)
def test_check_declared_size(declared: int | None, actual: int, at_least: bool, ok: bool) -> None:
    if ok:
        check_declared_size(declared, actual, at_least=at_least)
        return
    with pytest.raises(UploadFailure) as e:
        check_declared_size(declared, actual, at_least=at_least)
    assert e.value.reason == "declared_size_mismatch"
