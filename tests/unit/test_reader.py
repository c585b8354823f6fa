"""Streaming reads: whole-blob verification, ranges, resume after a broken stream."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import pytest

from blobledger.producers.reader import ByteRange, open_blob
from blobledger.schemas.errors import BlobIntegrityError
from blobledger.schemas.errors import NotFoundError, ValidationError
from tests.unit.fake_s3 import FakeS3


def _stored(data: bytes) -> tuple[FakeS3, str]:
    s3 = FakeS3()
    s3.objects["k"] = data
    return s3, hashlib.sha256(data).hexdigest()


def test_full_read_is_verified() -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    s3, sha = _stored(data)
    r = open_blob(s3, "b", "k", sha256=sha, size=len(data))
    assert r.read() == data and r.verified


def test_corrupt_blob_raises_at_end() -> None:
    s3, _ = _stored(b"hello world")
    r = open_blob(s3, "b", "k", sha256="0" * 64, size=11)
    with pytest.raises(BlobIntegrityError):
        r.read()


def test_ranges() -> None:
    data = bytes(range(256)) * 10
    s3, sha = _stored(data)
    assert open_blob(s3, "b", "k", sha256=sha, byte_range=ByteRange(10, 19)).read() == data[10:20]
    assert open_blob(s3, "b", "k", byte_range=ByteRange.parse("2500-")).read() == data[2500:]
    assert ByteRange.parse("5-9").header() == "bytes=5-9"
    with pytest.raises(ValidationError):
        ByteRange.parse("9-5")


def test_missing_blob() -> None:
    with pytest.raises(NotFoundError):
        open_blob(FakeS3(), "b", "nope")


def test_broken_stream_resumes_with_a_range_and_still_verifies() -> None:
    from urllib3.exceptions import ProtocolError

    data = os.urandom(100_000)
    s3, sha = _stored(data)

    class Breaking(io.BytesIO):
        def read(self, n: Any = -1) -> bytes:  # type: ignore[override]
            if self.tell() >= 40_000:
                raise ProtocolError("connection reset")
            return super().read(
                min(n, 40_000 - self.tell()) if n and n > 0 else 40_000 - self.tell()
            )

    real = s3.get_object
    first = {"done": False}

    def get_object(**kw: Any) -> dict[str, Any]:
        resp = real(**kw)
        if not first["done"]:
            first["done"] = True
            resp["Body"] = Breaking(resp["Body"].read())
        return resp

    s3.get_object = get_object  # type: ignore[method-assign]
    r = open_blob(s3, "b", "k", sha256=sha, size=len(data))
    assert r.read() == data and r.verified
