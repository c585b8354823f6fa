"""A hash is not a capability: a declared hash that is already stored becomes a dedup hit
only once the requester's own bytes hash to it. For a stream the proof reads and hashes
without sending anything; anything else is ``checksum_mismatch`` with nothing written."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from blobledger.blob_worker import transfer as tr
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.transfer import Transfer, TransferOptions, UploadSpec, content_key
from blobledger.infra.retry import CircuitBreaker
from tests.unit.fake_s3 import FakeS3

from tests.unit.transfer_support import MiB, fast_retries  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("fast_retries")


class Stream:
    """An http-like source: sequential, size announced or not."""

    def __init__(self, data: bytes, size: int | None) -> None:
        self.uri, self.size, self._data, self._pos, self.read = "http://x/blob", size, data, 0, 0

    def readinto(self, buf: memoryview) -> int:
        chunk = self._data[self._pos : self._pos + len(buf)]
        buf[: len(chunk)] = chunk
        self._pos += len(chunk)
        self.read += len(chunk)
        return len(chunk)

    def close(self) -> None:
        pass


def _run(monkeypatch: pytest.MonkeyPatch, s3: FakeS3, src: Stream, **spec: Any) -> Any:
    monkeypatch.setattr(tr, "open_source", lambda uri, **kw: src)
    t = Transfer(
        s3,
        TransferOptions("bucket", min_part_size=5 * MiB, max_blob_size=64 * MiB, retry_attempts=2),
        breaker=CircuitBreaker("s3", failure_threshold=100),
    )
    try:
        return t.run(UploadSpec("u1", "http://x/blob", **spec))
    finally:
        t.close()


def _stored(s3: FakeS3, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    s3.objects[content_key(sha)] = data
    return sha


@pytest.mark.parametrize("announced", [True, False])
def test_the_owner_of_the_bytes_proves_them_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, announced: bool
) -> None:
    data = os.urandom(12 * MiB + 5)
    s3 = FakeS3()
    sha = _stored(s3, data)
    src = Stream(data, len(data) if announced else None)
    r = _run(monkeypatch, s3, src, declared_sha256=sha)
    assert (r.dedup, r.bytes_sent, r.sha256, r.size) == (True, 0, sha, len(data))
    assert src.read == len(data)  # every byte was read: that is the proof
    assert s3.bytes_received == 0 and not s3.uploads


@pytest.mark.parametrize("announced", [True, False])
def test_other_bytes_with_a_known_hash_attach_nothing(
    monkeypatch: pytest.MonkeyPatch, announced: bool
) -> None:
    data = os.urandom(6 * MiB)
    s3 = FakeS3()
    sha = _stored(s3, data)
    forged = os.urandom(len(data))
    src = Stream(forged, len(forged) if announced else None)
    with pytest.raises(UploadFailure) as e:
        _run(monkeypatch, s3, src, declared_sha256=sha)
    assert e.value.reason == "checksum_mismatch"
    assert list(s3.objects) == [content_key(sha)] and s3.bytes_received == 0


def test_a_size_other_than_the_stored_blobs_fails_before_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3 = FakeS3()
    sha = _stored(s3, b"alice's bytes")
    src = Stream(b"x" * 100, 100)
    with pytest.raises(UploadFailure) as e:
        _run(monkeypatch, s3, src, declared_sha256=sha)
    assert e.value.reason == "checksum_mismatch" and src.read == 0


def test_an_endless_stream_stops_past_the_stored_size(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(MiB)
    s3 = FakeS3()
    sha = _stored(s3, data)
    src = Stream(data + os.urandom(40 * MiB), None)
    with pytest.raises(UploadFailure) as e:
        _run(monkeypatch, s3, src, declared_sha256=sha)
    assert e.value.reason == "checksum_mismatch" and src.read <= len(data) + 5 * MiB
