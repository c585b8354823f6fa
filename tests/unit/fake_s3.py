"""An in-memory S3 for unit tests of code that takes an injected client.

It checks what the real servers check (per-part CRC32, part ETags on completion) and
records calls and concurrency, so tests can assert what was sent."""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError


def client_error(code: str, status: int, op: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


def _read(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    return body.read()


def _crc(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


class FakeS3:
    def __init__(self, *, part_delay: float = 0.0) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.bytes_received = 0
        self.fail: dict[str, list[BaseException]] = {}
        self.part_delay = part_delay
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def _enter(self, op: str) -> None:
        with self._lock:
            self.calls.append(op)
            queue = self.fail.get(op)
            if queue:
                raise queue.pop(0)

    def _check_crc(self, data: bytes, crc: str | None, op: str) -> None:
        if crc is not None and _crc(data) != crc:
            raise client_error("BadDigest", 400, op)

    # --- objects ----------------------------------------------------------------------
    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self._enter("head_object")
        if Key not in self.objects:
            raise client_error("404", 404, "HeadObject")
        return {"ContentLength": len(self.objects[Key])}

    def put_object(
        self, Bucket: str, Key: str, Body: Any, ChecksumCRC32: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        self._enter("put_object")
        data = _read(Body)
        self._check_crc(data, ChecksumCRC32, "PutObject")
        with self._lock:
            self.bytes_received += len(data)
            self.objects[Key] = data
        return {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}

    def copy_object(self, Bucket: str, Key: str, CopySource: dict[str, str]) -> dict[str, Any]:
        self._enter("copy_object")
        self.objects[Key] = self.objects[CopySource["Key"]]
        return {}

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self._enter("delete_object")
        self.objects.pop(Key, None)
        return {}

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        import io

        self._enter("get_object")
        if Key not in self.objects:
            raise client_error("NoSuchKey", 404, "GetObject")
        data = self.objects[Key]
        if Range:
            a, b = Range.removeprefix("bytes=").split("-")
            data = data[int(a) : (int(b) + 1 if b else None)]
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}

    # --- multipart --------------------------------------------------------------------
    def create_multipart_upload(self, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        self._enter("create_multipart_upload")
        uid = f"mpu-{next(self._ids)}"
        self.uploads[uid] = {"Key": Key, "Initiated": datetime.now(UTC), "parts": {}}
        return {"UploadId": uid}

    def upload_part(
        self,
        Bucket: str,
        Key: str,
        UploadId: str,
        PartNumber: int,
        Body: Any,
        ChecksumCRC32: str | None = None,
    ) -> dict[str, Any]:
        self._enter("upload_part")
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            data = _read(Body)
            if self.part_delay:
                time.sleep(self.part_delay)
            self._check_crc(data, ChecksumCRC32, "UploadPart")
            up = self.uploads.get(UploadId)
            if up is None or up["Key"] != Key:
                raise client_error("NoSuchUpload", 404, "UploadPart")
            etag = hashlib.md5(data).hexdigest()
            with self._lock:
                self.bytes_received += len(data)
                up["parts"][PartNumber] = (data, etag, datetime.now(UTC))
            return {"ETag": f'"{etag}"'}
        finally:
            with self._lock:
                self.in_flight -= 1

    def list_multipart_uploads(self, Bucket: str, Prefix: str = "") -> dict[str, Any]:
        self._enter("list_multipart_uploads")
        return {
            "Uploads": [
                {"Key": u["Key"], "UploadId": uid, "Initiated": u["Initiated"]}
                for uid, u in self.uploads.items()
                if u["Key"].startswith(Prefix)
            ]
        }

    def list_parts(
        self, Bucket: str, Key: str, UploadId: str, PartNumberMarker: int = 0, MaxParts: int = 1000
    ) -> dict[str, Any]:
        self._enter("list_parts")
        up = self.uploads.get(UploadId)
        if up is None:
            raise client_error("NoSuchUpload", 404, "ListParts")
        parts = [
            {"PartNumber": n, "Size": len(d), "ETag": f'"{e}"', "LastModified": t}
            for n, (d, e, t) in sorted(up["parts"].items())
            if n > PartNumberMarker
        ]
        return {
            "Parts": parts[:MaxParts],
            "IsTruncated": len(parts) > MaxParts,
            "NextPartNumberMarker": parts[MaxParts - 1]["PartNumber"]
            if len(parts) > MaxParts
            else 0,
        }

    def complete_multipart_upload(
        self, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict[str, Any]
    ) -> dict[str, Any]:
        self._enter("complete_multipart_upload")
        up = self.uploads.get(UploadId)
        if up is None:
            raise client_error("NoSuchUpload", 404, "CompleteMultipartUpload")
        chunks = []
        for p in MultipartUpload["Parts"]:
            data, etag, _ = up["parts"][p["PartNumber"]]
            if p["ETag"].strip('"') != etag:
                raise client_error("InvalidPart", 400, "CompleteMultipartUpload")
            chunks.append(data)
        self.objects[Key] = b"".join(chunks)
        del self.uploads[UploadId]
        return {}

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self._enter("abort_multipart_upload")
        if self.uploads.pop(UploadId, None) is None:
            raise client_error("NoSuchUpload", 404, "AbortMultipartUpload")
        return {}
