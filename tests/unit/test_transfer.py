"""The transfer against an injected in-memory S3 (tests/unit/fake_s3.py): paths, dedup,
resume, checksums, cleanup on failure, bounded parallelism, retries."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from blobledger.blob_worker import strategies
from blobledger.blob_worker import transfer as tr
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.transfer import Transfer, UploadSpec, content_key
from blobledger.infra.retry import CircuitBreaker
from blobledger.schemas.errors import PermanentError, TransientError
from tests.unit.fake_s3 import FakeS3, client_error

from tests.unit.transfer_support import MiB, OPTS, fast_retries  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("fast_retries")


def _file(
    tmp_path: Path, size: int, name: str = "blob.bin", seed: bytes = b"x"
) -> tuple[Path, bytes]:
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i & 0xFF) for i, b in enumerate(data[:4096])) + data[4096:]
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def _transfer(s3: FakeS3, cache: HashCache | None = None, **opts: Any) -> Transfer:
    o = dataclasses.replace(OPTS, **opts)
    return Transfer(s3, o, hash_cache=cache, breaker=CircuitBreaker("s3", failure_threshold=100))


def test_local_file_multipart_to_content_key(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 12 * MiB + 3)
    s3 = FakeS3()
    r = _transfer(s3).run(UploadSpec("u1", str(path)))
    sha = hashlib.sha256(data).hexdigest()
    assert (r.sha256, r.size, r.key, r.dedup) == (sha, len(data), content_key(sha), False)
    assert r.key == f"blobs/sha256/{sha[:2]}/{sha}"
    assert s3.objects[r.key] == data
    assert r.part_count == 3 and r.bytes_sent == len(data)
    assert not s3.uploads and "copy_object" not in s3.calls  # no staging for local files


def test_small_file_is_one_put(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 1000)
    s3 = FakeS3()
    r = _transfer(s3).run(UploadSpec("u1", f"file://{path}"))
    assert s3.objects[r.key] == data and "create_multipart_upload" not in s3.calls


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    s3 = FakeS3()
    r = _transfer(s3).run(UploadSpec("u1", str(path)))
    assert r.sha256 == hashlib.sha256(b"").hexdigest() and s3.objects[r.key] == b""


def test_reupload_sends_nothing_and_skips_hashing_with_the_stat_cache(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    s3, cache = FakeS3(), HashCache()
    t = _transfer(s3, cache)
    first = t.run(UploadSpec("u1", str(path)))
    sent = s3.bytes_received
    s3.calls.clear()
    again = t.run(UploadSpec("u2", str(path)))
    assert again.dedup and again.bytes_sent == 0 and again.key == first.key
    assert s3.bytes_received == sent
    assert s3.calls == ["head_object"]  # stat cache hit: one HEAD, no hash pass


def test_same_content_elsewhere_dedups_after_hashing(tmp_path: Path) -> None:
    a, data = _file(tmp_path, 7 * MiB, "a")
    b = tmp_path / "b"
    b.write_bytes(data)
    s3 = FakeS3()
    t = _transfer(s3)
    t.run(UploadSpec("u1", str(a)))
    sent = s3.bytes_received
    r = t.run(UploadSpec("u2", str(b)))
    assert r.dedup and s3.bytes_received == sent


def test_changed_file_is_not_served_from_cache(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 6 * MiB)
    s3, cache = FakeS3(), HashCache()
    t = _transfer(s3, cache)
    first = t.run(UploadSpec("u1", str(path)))
    with open(path, "r+b") as f:
        f.write(b"changed!")
    second = t.run(UploadSpec("u2", str(path)))
    assert second.key != first.key and not second.dedup


def test_a_declared_stored_hash_is_no_capability(tmp_path: Path) -> None:
    """Knowing a stored blob's hash attaches nothing: the requester's own source must be
    read and hash to it."""
    path, _ = _file(tmp_path, 6 * MiB)
    other, _ = _file(tmp_path, 6 * MiB, "other.bin", seed=b"y")
    s3 = FakeS3()
    t = _transfer(s3)
    stored = t.run(UploadSpec("u1", str(path)))
    for source, reason in ((tmp_path / "gone", "source_not_found"), (other, "checksum_mismatch")):
        with pytest.raises(UploadFailure) as e:
            t.run(UploadSpec("u2", str(source), declared_sha256=stored.sha256))
        assert e.value.reason == reason
    again = t.run(UploadSpec("u3", str(path), declared_sha256=stored.sha256))
    assert again.dedup and again.bytes_sent == 0


@pytest.mark.parametrize(
    "spec_kw, reason",
    [
        ({"declared_sha256": "0" * 64}, "checksum_mismatch"),
        ({"declared_size": 5}, "declared_size_mismatch"),
        ({"declared_sha256": "not-hex"}, "invalid_command"),
    ],
)
def test_declared_mismatch_is_refused_before_any_byte_is_sent(
    tmp_path: Path, spec_kw: dict[str, Any], reason: str
) -> None:
    path, _ = _file(tmp_path, 9 * MiB)
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3).run(UploadSpec("u1", str(path), **spec_kw))
    assert e.value.reason == reason
    assert s3.bytes_received == 0 and not s3.objects and not s3.uploads


def test_size_limit(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 2 * MiB)
    with pytest.raises(UploadFailure) as e:
        _transfer(FakeS3(), max_blob_size=MiB).run(UploadSpec("u1", str(path)))
    assert e.value.reason == "size_limit"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: str(p / "missing"), "source_not_found"),
        (lambda p: str(p), "source_not_regular"),  # a directory
        (lambda p: "ftp://example.com/x", "invalid_command"),
    ],
)
def test_bad_sources(tmp_path: Path, make: Any, reason: str) -> None:
    with pytest.raises(UploadFailure) as e:
        _transfer(FakeS3()).run(UploadSpec("u1", make(tmp_path)))
    assert e.value.reason == reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 10)
    path.chmod(0)
    with pytest.raises(UploadFailure) as e:
        _transfer(FakeS3()).run(UploadSpec("u1", str(path)))
    assert e.value.reason == "unreadable_source"


def test_resume_keeps_verified_parts_and_resends_the_rest(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 16 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    s3 = FakeS3()
    # a crashed earlier attempt: part 1 intact, part 2 of the right size but wrong bytes
    uid = s3.create_multipart_upload(Bucket="bucket", Key=content_key(sha))["UploadId"]
    s3.upload_part(
        Bucket="bucket", Key=content_key(sha), UploadId=uid, PartNumber=1, Body=data[: 5 * MiB]
    )
    s3.upload_part(
        Bucket="bucket", Key=content_key(sha), UploadId=uid, PartNumber=2, Body=b"\0" * (5 * MiB)
    )
    s3.bytes_received = 0
    r = _transfer(s3).run(UploadSpec("u1", str(path)))
    assert s3.objects[r.key] == data
    assert r.resumed_parts == 1 and r.bytes_sent == len(data) - 5 * MiB == s3.bytes_received
    assert not s3.uploads


def test_transient_part_errors_are_retried(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 11 * MiB)
    s3 = FakeS3()
    s3.fail["upload_part"] = [
        client_error("SlowDown", 503, "UploadPart"),
        client_error("InternalError", 500, "UploadPart"),
    ]
    r = _transfer(s3).run(UploadSpec("u1", str(path)))
    assert s3.objects[r.key] == data and s3.calls.count("upload_part") == 3 + 2


def test_permanent_s3_error_aborts_the_multipart_upload(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    s3 = FakeS3()
    s3.fail["upload_part"] = [client_error("AccessDenied", 403, "UploadPart")]
    with pytest.raises(PermanentError):
        _transfer(s3).run(UploadSpec("u1", str(path)))
    assert not s3.uploads and "abort_multipart_upload" in s3.calls


def test_spent_retries_leave_the_upload_open_for_resume_unless_final(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    s3 = FakeS3()
    s3.fail["upload_part"] = [client_error("SlowDown", 503, "UploadPart")] * 3
    with pytest.raises(TransientError):
        _transfer(s3, max_in_flight=1).run(UploadSpec("u1", str(path)), final_attempt=False)
    assert len(s3.uploads) == 1  # the next attempt (or redelivery) resumes it
    s3.fail["upload_part"] = [client_error("SlowDown", 503, "UploadPart")] * 3
    with pytest.raises(TransientError):
        _transfer(s3, max_in_flight=1).run(UploadSpec("u1", str(path)), final_attempt=True)
    assert not s3.uploads


def test_file_changed_between_hash_and_upload_is_a_checksum_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _file(tmp_path, 11 * MiB)
    real = strategies.hash_file

    def hash_then_modify(*args: Any, **kw: Any) -> Any:
        digest = real(*args, **kw)
        with open(path, "r+b") as f:
            f.write(b"tampered")
        return digest

    monkeypatch.setattr(strategies, "hash_file", hash_then_modify)
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3).run(UploadSpec("u1", str(path)))
    assert e.value.reason == "checksum_mismatch" and not s3.objects and not s3.uploads


def test_parallel_parts_are_bounded(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 30 * MiB)
    s3 = FakeS3(part_delay=0.05)
    r = _transfer(s3, max_in_flight=3).run(UploadSpec("u1", str(path)))
    assert s3.objects[r.key] == data and s3.max_in_flight == 3


def test_progress_reports_bytes(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 11 * MiB)
    seen: list[Any] = []
    _transfer(FakeS3()).run(UploadSpec("u1", str(path)), progress=seen.append)
    assert seen[-1].state == "stored" and seen[-1].bytes_done == len(data)
    assert {p.state for p in seen} >= {"hashing", "uploading", "stored"}


# --- streams (a fake source stands in for HTTP; the HTTP adapter has integration tests) ----
class BytesSource:
    def __init__(self, data: bytes, size: int | None, cut: int | None = None) -> None:
        self.uri, self.size, self._data, self._pos = "http://fake/blob", size, data[:cut], 0

    def readinto(self, buf: memoryview) -> int:
        chunk = self._data[self._pos : self._pos + len(buf)]
        buf[: len(chunk)] = chunk
        self._pos += len(chunk)
        if len(chunk) < len(buf) and self.size is not None and self._pos < self.size:
            raise UploadFailure("truncated_source", "body ended early")
        return len(chunk)

    def close(self) -> None:
        pass


def _stream(monkeypatch: pytest.MonkeyPatch, src: BytesSource) -> None:
    monkeypatch.setattr(tr, "open_source", lambda uri, **kw: src)


@pytest.mark.parametrize("known_size", [True, False])
def test_stream_goes_through_staging_and_is_promoted(
    monkeypatch: pytest.MonkeyPatch, known_size: bool
) -> None:
    data = os.urandom(13 * MiB)
    _stream(monkeypatch, BytesSource(data, len(data) if known_size else None))
    s3 = FakeS3()
    r = _transfer(s3).run(UploadSpec("u1", "http://fake/blob"))
    assert s3.objects == {content_key(hashlib.sha256(data).hexdigest()): data}
    assert r.part_count == 3 and not r.dedup and not s3.uploads


def test_stream_of_stored_content_is_dedup(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(6 * MiB)
    s3 = FakeS3()
    s3.objects[content_key(hashlib.sha256(data).hexdigest())] = data
    _stream(monkeypatch, BytesSource(data, None))
    r = _transfer(s3).run(UploadSpec("u1", "http://fake/blob"))
    assert r.dedup and list(s3.objects) == [r.key]  # staging removed


def test_stream_with_declared_hash_goes_straight_to_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(11 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    _stream(monkeypatch, BytesSource(data, None))
    s3 = FakeS3()
    r = _transfer(s3).run(UploadSpec("u1", "http://fake/blob", declared_sha256=sha))
    assert r.key == content_key(sha) and "copy_object" not in s3.calls


def test_stream_with_wrong_declared_hash_never_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(11 * MiB)
    _stream(monkeypatch, BytesSource(data, None))
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3).run(UploadSpec("u1", "http://fake/blob", declared_sha256="a" * 64))
    assert e.value.reason == "checksum_mismatch" and not s3.objects and not s3.uploads


def test_truncated_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(12 * MiB)
    _stream(monkeypatch, BytesSource(data, len(data), cut=7 * MiB))
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3).run(UploadSpec("u1", "http://fake/blob"))
    assert e.value.reason == "truncated_source" and not s3.objects and not s3.uploads


def test_stream_longer_than_declared_size(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(12 * MiB)
    _stream(monkeypatch, BytesSource(data, None))
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3).run(UploadSpec("u1", "http://fake/blob", declared_size=10 * MiB))
    assert e.value.reason == "declared_size_mismatch" and not s3.objects and not s3.uploads


def test_unknown_size_stream_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(12 * MiB)
    _stream(monkeypatch, BytesSource(data, None))
    s3 = FakeS3()
    with pytest.raises(UploadFailure) as e:
        _transfer(s3, max_blob_size=10 * MiB).run(UploadSpec("u1", "http://fake/blob"))
    assert e.value.reason == "size_limit" and not s3.uploads


def test_promotion_falls_back_to_copy_when_the_rename_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blobledger.blob_worker.promotion import RenameOrCopy, SeaweedFilerRename
    from blobledger.blob_worker.transfer import ServerSideCopy

    data = os.urandom(6 * MiB)
    _stream(monkeypatch, BytesSource(data, None))
    s3 = FakeS3()
    t = _transfer(s3)
    refusing = SeaweedFilerRename("http://127.0.0.1:9")  # nothing listens there
    t.promoter = RenameOrCopy(refusing, ServerSideCopy(t.calls, max_blob_size=t.opts.max_blob_size))
    r = t.run(UploadSpec("u1", "http://fake/blob"))
    assert s3.objects == {r.key: data} and "copy_object" in s3.calls


@pytest.mark.parametrize("size", [12 * MiB + 3, 1000])
def test_local_stream_mode_hashes_while_uploading_then_promotes(tmp_path: Path, size: int) -> None:
    path, data = _file(tmp_path, size)
    s3, cache = FakeS3(), HashCache()
    t = _transfer(s3, cache, local_files="stream")
    r = t.run(UploadSpec("u1", str(path)))
    assert s3.objects == {content_key(hashlib.sha256(data).hexdigest()): data} and not s3.uploads
    again = t.run(UploadSpec("u2", str(path)))
    assert (
        again.dedup and again.bytes_sent == 0 and again.key == r.key
    )  # the stat cache still applies


def test_local_stream_mode_dedups_after_sending(tmp_path: Path) -> None:
    a, data = _file(tmp_path, 11 * MiB, "a")
    b = tmp_path / "b"
    b.write_bytes(data)
    s3 = FakeS3()
    t = _transfer(s3, local_files="stream")
    first = t.run(UploadSpec("u1", str(a)))
    second = t.run(UploadSpec("u2", str(b)))
    assert second.dedup and second.key == first.key and list(s3.objects) == [first.key]
    assert second.bytes_sent == len(data)  # the price of one pass: known only at the end
