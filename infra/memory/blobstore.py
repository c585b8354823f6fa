"""In-memory twin of the blob store: the boto3 S3 client operations blobledger uses.

It refuses what the real servers refuse, so a unit test cannot pass on bytes S3 would
reject: parameters are validated against botocore's own S3 model (an unknown or missing
parameter raises the same ``ParamValidationError`` as boto3), part and object checksums
(CRC32, SHA-1, SHA-256, Content-MD5) are verified (``BadDigest``), completing a multipart
upload checks part order, ETags, the 5 MiB minimum of every part but the last, and the
per-part checksums an upload created with ``ChecksumAlgorithm`` must list. Errors are
botocore ``ClientError``s with S3's codes and HTTP statuses; responses carry the fields
S3 returns (``ETag`` quoted, multipart ETags as ``md5(part md5s)-N``, ``Contents`` and
``Uploads`` omitted when empty). Checked against the real adapter (boto3 on SeaweedFS) by
``tests/contract/test_blobstore_contract.py``.

Test hooks: ``objects`` (key -> bytes, writable), ``uploads``, ``calls`` (operation
names in order), ``fail`` (operation -> exceptions to raise on its next calls),
``bytes_received``, ``max_in_flight`` (concurrent ``upload_part`` calls) and
``part_delay``.

Deliberately not modelled: one key namespace for every bucket name (pass ``bucket`` to
refuse other names with ``NoSuchBucket``), versioning, ACLs, encryption, storage
classes, conditional reads, and CRC32C/CRC64NVME verification (accepted unchecked).
Presigned URLs are ``memory://bucket/key?expires=<epoch seconds>``: nothing serves them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from botocore.exceptions import ClientError, OperationNotPageableError
from botocore.response import StreamingBody

MiB = 1024 * 1024
#: S3's minimum size of every part of a multipart upload but the last
MIN_PART_SIZE = 5 * MiB
MAX_PART_NUMBER = 10000


def client_error(code: str, status: int, op: str, message: str | None = None) -> ClientError:
    """A botocore ``ClientError`` as S3 returns it (``op``: the API name, e.g. PutObject)."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message or code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


_model_lock = threading.Lock()
_model: Any = None


def _s3_model() -> Any:
    """botocore's S3 service model, loaded once (~0.2 s): the parameters boto3 accepts."""
    global _model
    with _model_lock:
        if _model is None:
            import botocore.session

            _model = botocore.session.get_session().get_service_model("s3")
        return _model


def _validate(api_name: str, params: Mapping[str, Any]) -> None:
    from botocore.validate import validate_parameters

    validate_parameters(dict(params), _s3_model().operation_model(api_name).input_shape)


def _api_name(method: str) -> str:
    """``put_object`` -> ``PutObject``."""
    return "".join(part.capitalize() for part in method.split("_"))


def _read(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return bytes(body.read())


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _crc32(data: bytes) -> str:
    return _b64(zlib.crc32(data).to_bytes(4, "big"))


def _quoted(etag: str) -> str:
    return f'"{etag}"'


#: checksums we can verify, by request parameter
_CHECKSUMS = {
    "ChecksumCRC32": _crc32,
    "ChecksumSHA1": lambda d: _b64(hashlib.sha1(d).digest()),
    "ChecksumSHA256": lambda d: _b64(hashlib.sha256(d).digest()),
    "ContentMD5": lambda d: _b64(hashlib.md5(d).digest()),
}


@dataclass(slots=True)
class _Meta:
    source: bytes  # the bytes this metadata describes (``objects`` may be replaced directly)
    etag: str
    modified: datetime
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] | None = None
    crc32: str | None = None


class _Paginator:
    """What ``client.get_paginator(op).paginate(...)`` gives: pages, following markers."""

    _MARKERS: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]] = {
        # op: (request marker(s), response marker(s), page size parameter)
        "list_objects_v2": (("ContinuationToken",), ("NextContinuationToken",), "MaxKeys"),
        "list_multipart_uploads": (
            ("KeyMarker", "UploadIdMarker"),
            ("NextKeyMarker", "NextUploadIdMarker"),
            "MaxUploads",
        ),
        "list_parts": (("PartNumberMarker",), ("NextPartNumberMarker",), "MaxParts"),
    }

    def __init__(self, store: InMemoryBlobStore, op: str) -> None:
        self._store, self._op = store, op

    def paginate(self, **kw: Any) -> Iterator[dict[str, Any]]:
        config = dict(kw.pop("PaginationConfig", None) or {})
        ins, outs, size_param = self._MARKERS[self._op]
        if config.get("PageSize"):
            kw[size_param] = int(config["PageSize"])
        left = int(config["MaxItems"]) if config.get("MaxItems") else None
        fn = getattr(self._store, self._op)
        while True:
            page = fn(**kw)
            if left is not None:
                left -= sum(len(v) for v in page.values() if isinstance(v, list))
            yield page
            if not page.get("IsTruncated") or (left is not None and left <= 0):
                return
            for i, o in zip(ins, outs, strict=True):
                if o in page:
                    kw[i] = page[o]


class InMemoryBlobStore:
    """boto3's S3 client, in memory (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        bucket: str | None = None,
        part_delay: float = 0.0,
        min_part_size: int = MIN_PART_SIZE,
    ) -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.bytes_received = 0
        self.fail: dict[str, list[BaseException]] = {}
        self.part_delay = part_delay
        self.min_part_size = min_part_size
        self.in_flight = 0
        self.max_in_flight = 0
        self._meta: dict[str, _Meta] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # --- plumbing ------------------------------------------------------------------------------
    def _enter(self, op: str, params: Mapping[str, Any]) -> None:
        """Validate like boto3, record the call, raise an injected failure, check the bucket."""
        source = params.get("CopySource")
        if isinstance(source, Mapping):  # boto3 turns the dict form into "bucket/key" first
            params = {**params, "CopySource": f"{source['Bucket']}/{quote(source['Key'])}"}
        _validate(_api_name(op), params)
        with self._lock:
            self.calls.append(op)
            queue = self.fail.get(op)
            if queue:
                raise queue.pop(0)
        name = params.get("Bucket")
        if self.bucket is not None and name is not None and name != self.bucket:
            raise client_error(
                "NoSuchBucket", 404, _api_name(op), "The specified bucket does not exist"
            )

    def _verify(self, data: bytes, params: Mapping[str, Any], op: str) -> None:
        for name, fn in _CHECKSUMS.items():
            sent = params.get(name)
            if sent is not None and fn(data) != sent:
                raise client_error(
                    "BadDigest", 400, op, f"The {name} you specified did not match the received"
                )

    def _described(self, key: str) -> _Meta:
        """The metadata of ``objects[key]`` (rebuilt if a test replaced the bytes)."""
        data = self.objects[key]
        meta = self._meta.get(key)
        if meta is None or meta.source is not data:
            meta = _Meta(data, hashlib.md5(data).hexdigest(), datetime.now(UTC))
            self._meta[key] = meta
        return meta

    def _store(self, key: str, data: bytes, meta: _Meta) -> None:
        self.objects[key] = data
        self._meta[key] = meta

    def _existing(self, key: str, op: str) -> tuple[bytes, _Meta]:
        with self._lock:
            if key not in self.objects:
                if op == "HeadObject":  # a HEAD has no body: botocore sees only the status
                    raise client_error("404", 404, op, "Not Found")
                raise client_error("NoSuchKey", 404, op, "The specified key does not exist.")
            return self.objects[key], self._described(key)

    def _upload(self, upload_id: str, key: str, op: str) -> dict[str, Any]:
        up = self.uploads.get(upload_id)
        if up is None or up["Key"] != key:
            raise client_error(
                "NoSuchUpload", 404, op, "The specified multipart upload does not exist."
            )
        return up

    @staticmethod
    def _head_fields(meta: _Meta, size: int) -> dict[str, Any]:
        return {
            "AcceptRanges": "bytes",
            "LastModified": meta.modified,
            "ContentLength": size,
            "ETag": _quoted(meta.etag),
            "ContentType": meta.content_type,
            "Metadata": dict(meta.metadata or {}),
        }

    # --- objects ---------------------------------------------------------------------------------
    def head_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, **kw}
        self._enter("head_object", kw)
        data, meta = self._existing(kw["Key"], "HeadObject")
        out = self._head_fields(meta, len(data))
        if kw.get("ChecksumMode") == "ENABLED" and meta.crc32:
            out["ChecksumCRC32"] = meta.crc32
        return out

    def put_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, **kw}
        self._enter("put_object", kw)
        data = _read(kw.get("Body"))
        self._verify(data, kw, "PutObject")
        key = kw["Key"]
        with self._lock:
            if kw.get("IfNoneMatch") == "*" and key in self.objects:
                raise client_error(
                    "PreconditionFailed", 412, "PutObject", "At least one precondition failed"
                )
            self.bytes_received += len(data)
            meta = _Meta(
                data,
                hashlib.md5(data).hexdigest(),
                datetime.now(UTC),
                kw.get("ContentType") or "application/octet-stream",
                dict(kw.get("Metadata") or {}),
                kw.get("ChecksumCRC32"),
            )
            self._store(key, data, meta)
        out: dict[str, Any] = {"ETag": _quoted(meta.etag)}
        if meta.crc32:
            out["ChecksumCRC32"] = meta.crc32
        return out

    def get_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, **kw}
        self._enter("get_object", kw)
        data, meta = self._existing(kw["Key"], "GetObject")
        out = self._head_fields(meta, len(data))
        rng = kw.get("Range")
        if rng:
            first, last = self._range(rng, len(data))
            out["ContentRange"] = f"bytes {first}-{last}/{len(data)}"
            data = data[first : last + 1]
            out["ContentLength"] = len(data)
        out["Body"] = StreamingBody(io.BytesIO(data), len(data))
        return out

    @staticmethod
    def _range(header: str, size: int) -> tuple[int, int]:
        """Inclusive byte bounds of an HTTP range (S3: a range past the end is cut short,
        one that starts past it is ``InvalidRange``)."""
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            return 0, size - 1  # S3 ignores a malformed range and returns everything
        if not m.group(1):
            n = int(m.group(2))
            if n == 0 or size == 0:
                raise client_error(
                    "InvalidRange", 416, "GetObject", "The requested range is not satisfiable"
                )
            return max(0, size - n), size - 1
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else size - 1
        if first >= size or last < first:
            raise client_error(
                "InvalidRange", 416, "GetObject", "The requested range is not satisfiable"
            )
        return first, min(last, size - 1)

    @staticmethod
    def _source(copy_source: Any) -> tuple[str, str]:
        if isinstance(copy_source, Mapping):
            return copy_source["Bucket"], copy_source["Key"]
        bucket, _, key = unquote(str(copy_source).lstrip("/").split("?", 1)[0]).partition("/")
        return bucket, key

    def copy_object(
        self, *, Bucket: str, Key: str, CopySource: Mapping[str, str] | str, **kw: Any
    ) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, "CopySource": CopySource, **kw}
        self._enter("copy_object", kw)
        bucket, key = self._source(kw["CopySource"])
        if self.bucket is not None and bucket != self.bucket:
            raise client_error(
                "NoSuchBucket", 404, "CopyObject", "The specified bucket does not exist"
            )
        with self._lock:
            data, meta = self._existing(key, "CopyObject")
            replace = kw.get("MetadataDirective") == "REPLACE"
            copied = _Meta(
                data,
                meta.etag,
                datetime.now(UTC),
                (kw.get("ContentType") or "application/octet-stream")
                if replace
                else meta.content_type,
                dict(kw.get("Metadata") or {}) if replace else dict(meta.metadata or {}),
                meta.crc32,
            )
            self._store(kw["Key"], data, copied)
        return {"CopyObjectResult": {"ETag": _quoted(copied.etag), "LastModified": copied.modified}}

    def delete_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, **kw}
        self._enter("delete_object", kw)
        with self._lock:
            self.objects.pop(kw["Key"], None)
            self._meta.pop(kw["Key"], None)
        return {}

    def delete_objects(self, **kw: Any) -> dict[str, Any]:
        self._enter("delete_objects", kw)
        keys = [o["Key"] for o in kw["Delete"]["Objects"]]
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)
                self._meta.pop(key, None)
        return {} if kw["Delete"].get("Quiet") else {"Deleted": [{"Key": k} for k in keys]}

    def list_objects_v2(self, **kw: Any) -> dict[str, Any]:
        self._enter("list_objects_v2", kw)
        prefix, delimiter = kw.get("Prefix", ""), kw.get("Delimiter", "")
        max_keys = int(kw.get("MaxKeys", 1000))
        after = kw.get("ContinuationToken") or kw.get("StartAfter") or ""
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix) and k > after)
            contents: list[dict[str, Any]] = []
            common: list[str] = []
            i, last = 0, ""
            while i < len(keys) and len(contents) + len(common) < max_keys:
                key, rest = keys[i], keys[i][len(prefix) :]
                if delimiter and delimiter in rest:
                    # one entry for everything under the common prefix
                    cp = prefix + rest.split(delimiter, 1)[0] + delimiter
                    common.append(cp)
                    while i < len(keys) and keys[i].startswith(cp):
                        i += 1
                    last = keys[i - 1]
                    continue
                meta = self._described(key)
                contents.append(
                    {
                        "Key": key,
                        "LastModified": meta.modified,
                        "ETag": _quoted(meta.etag),
                        "Size": len(self.objects[key]),
                        "StorageClass": "STANDARD",
                    }
                )
                last, i = key, i + 1
            truncated = i < len(keys)
        out: dict[str, Any] = {
            "IsTruncated": truncated,
            "Name": kw["Bucket"],
            "Prefix": prefix,
            "MaxKeys": max_keys,
            "KeyCount": len(contents) + len(common),
        }
        if contents:
            out["Contents"] = contents
        if common:
            out["CommonPrefixes"] = [{"Prefix": p} for p in common]
        if truncated:
            out["NextContinuationToken"] = last
        return out

    # --- multipart -----------------------------------------------------------------------------
    def create_multipart_upload(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, **kw}
        self._enter("create_multipart_upload", kw)
        uid = f"{next(self._ids):08d}-{uuid.uuid4().hex}"
        with self._lock:
            self.uploads[uid] = {
                "Key": kw["Key"],
                "Initiated": datetime.now(UTC),
                "parts": {},  # number -> (bytes, md5 hex, last modified)
                "ChecksumAlgorithm": kw.get("ChecksumAlgorithm"),
                "ContentType": kw.get("ContentType") or "application/octet-stream",
                "Metadata": dict(kw.get("Metadata") or {}),
            }
        out: dict[str, Any] = {"Bucket": kw["Bucket"], "Key": kw["Key"], "UploadId": uid}
        if kw.get("ChecksumAlgorithm"):
            out["ChecksumAlgorithm"] = kw["ChecksumAlgorithm"]
        return out

    def upload_part(self, **kw: Any) -> dict[str, Any]:
        self._enter("upload_part", kw)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            data = _read(kw.get("Body"))
            if self.part_delay:
                time.sleep(self.part_delay)
            return self._add_part(kw, data, "UploadPart", with_checksum=True)
        finally:
            with self._lock:
                self.in_flight -= 1

    def upload_part_copy(self, **kw: Any) -> dict[str, Any]:
        self._enter("upload_part_copy", kw)
        _, key = self._source(kw["CopySource"])
        data, _ = self._existing(key, "UploadPartCopy")
        if kw.get("CopySourceRange"):
            first, last = self._range(kw["CopySourceRange"], len(data))
            data = data[first : last + 1]
        r = self._add_part(kw, data, "UploadPartCopy", with_checksum=False)
        return {"CopyPartResult": {"ETag": r["ETag"], "LastModified": datetime.now(UTC)}}

    def _add_part(
        self, kw: Mapping[str, Any], data: bytes, op: str, *, with_checksum: bool
    ) -> dict[str, Any]:
        number = int(kw["PartNumber"])
        if not 1 <= number <= MAX_PART_NUMBER:
            raise client_error(
                "InvalidArgument", 400, op, "Part number must be an integer between 1 and 10000"
            )
        if with_checksum:
            self._verify(data, kw, op)
        etag = hashlib.md5(data).hexdigest()
        with self._lock:
            up = self._upload(kw["UploadId"], kw["Key"], op)
            self.bytes_received += len(data) if with_checksum else 0
            # a re-sent part replaces the earlier one (AWS; SeaweedFS lists both)
            up["parts"][number] = (data, etag, datetime.now(UTC))
        out: dict[str, Any] = {"ETag": _quoted(etag)}
        if with_checksum and (kw.get("ChecksumCRC32") or up["ChecksumAlgorithm"] == "CRC32"):
            out["ChecksumCRC32"] = _crc32(data)
        return out

    def list_parts(self, **kw: Any) -> dict[str, Any]:
        self._enter("list_parts", kw)
        marker, max_parts = int(kw.get("PartNumberMarker") or 0), int(kw.get("MaxParts", 1000))
        with self._lock:
            up = self._upload(kw["UploadId"], kw["Key"], "ListParts")
            parts = [
                {"PartNumber": n, "LastModified": t, "ETag": _quoted(e), "Size": len(d)}
                for n, (d, e, t) in sorted(up["parts"].items())
                if n > marker
            ]
        truncated = len(parts) > max_parts
        out: dict[str, Any] = {
            "Bucket": kw["Bucket"],
            "Key": kw["Key"],
            "UploadId": kw["UploadId"],
            "PartNumberMarker": marker,
            "MaxParts": max_parts,
            "IsTruncated": truncated,
        }
        if parts:
            out["Parts"] = parts[:max_parts]
        if truncated:
            out["NextPartNumberMarker"] = parts[max_parts - 1]["PartNumber"]
        return out

    def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]:
        self._enter("list_multipart_uploads", kw)
        prefix = kw.get("Prefix", "")
        max_uploads = int(kw.get("MaxUploads", 1000))
        after = (kw.get("KeyMarker") or "", kw.get("UploadIdMarker") or "")
        with self._lock:
            found = sorted(
                (u["Key"], uid, u["Initiated"])
                for uid, u in self.uploads.items()
                if u["Key"].startswith(prefix) and (u["Key"], uid) > after
            )
        page = found[:max_uploads]
        out: dict[str, Any] = {
            "Bucket": kw["Bucket"],
            "Prefix": prefix,
            "MaxUploads": max_uploads,
            "IsTruncated": len(found) > max_uploads,
        }
        if page:
            out["Uploads"] = [{"UploadId": u, "Key": k, "Initiated": t} for k, u, t in page]
        if out["IsTruncated"]:
            out["NextKeyMarker"], out["NextUploadIdMarker"] = page[-1][0], page[-1][1]
        return out

    def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self._enter("complete_multipart_upload", kw)
        op = "CompleteMultipartUpload"
        listed = (kw.get("MultipartUpload") or {}).get("Parts") or []
        key = kw["Key"]
        with self._lock:
            up = self._upload(kw["UploadId"], key, op)
            if not listed:
                raise client_error(
                    "MalformedXML", 400, op, "The XML you provided was not well-formed"
                )
            numbers = [int(p["PartNumber"]) for p in listed]
            if numbers != sorted(set(numbers)):
                raise client_error(
                    "InvalidPartOrder", 400, op, "The list of parts was not in ascending order."
                )
            chunks: list[bytes] = []
            digests: list[bytes] = []
            for i, p in enumerate(listed):
                stored = up["parts"].get(int(p["PartNumber"]))
                if stored is None or str(p.get("ETag", "")).strip('"') != stored[1]:
                    raise client_error(
                        "InvalidPart",
                        400,
                        op,
                        "One or more of the specified parts could not be found.",
                    )
                if i < len(listed) - 1 and len(stored[0]) < self.min_part_size:
                    raise client_error(
                        "EntityTooSmall",
                        400,
                        op,
                        "Your proposed upload is smaller than the minimum allowed object size.",
                    )
                if up["ChecksumAlgorithm"] == "CRC32":
                    sent = p.get("ChecksumCRC32")
                    if sent is None:
                        raise client_error(
                            "InvalidRequest",
                            400,
                            op,
                            "The upload was created using a crc32 checksum. The complete "
                            "request must include the checksum for each part.",
                        )
                    if sent != _crc32(stored[0]):
                        raise client_error(
                            "BadDigest", 400, op, "A part's checksum does not match its bytes."
                        )
                chunks.append(stored[0])
                digests.append(bytes.fromhex(stored[1]))
            data = b"".join(chunks)
            etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(listed)}"
            self._store(
                key,
                data,
                _Meta(data, etag, datetime.now(UTC), up["ContentType"], up["Metadata"]),
            )
            del self.uploads[kw["UploadId"]]
        return {
            "Location": f"memory://{kw['Bucket']}/{quote(key)}",
            "Bucket": kw["Bucket"],
            "Key": key,
            "ETag": _quoted(etag),
        }

    def abort_multipart_upload(
        self, *, Bucket: str, Key: str, UploadId: str, **kw: Any
    ) -> dict[str, Any]:
        kw = {"Bucket": Bucket, "Key": Key, "UploadId": UploadId, **kw}
        self._enter("abort_multipart_upload", kw)
        with self._lock:
            self._upload(kw["UploadId"], kw["Key"], "AbortMultipartUpload")
            del self.uploads[kw["UploadId"]]
        return {}

    # --- client helpers ------------------------------------------------------------------------
    def generate_presigned_url(
        self,
        ClientMethod: str,
        Params: Mapping[str, Any] | None = None,
        ExpiresIn: int = 3600,
        HttpMethod: str | None = None,
    ) -> str:
        """``memory://bucket/key?expires=...`` after boto3's parameter checks (boto3 signs
        without asking the server either, so a missing key still gets a URL)."""
        params = dict(Params or {})
        _validate(_api_name(ClientMethod), params)
        expires = int(time.time()) + int(ExpiresIn)
        key = quote(str(params.get("Key", "")))
        return f"memory://{params.get('Bucket', '')}/{key}?expires={expires}"

    def can_paginate(self, operation_name: str) -> bool:
        return operation_name in _Paginator._MARKERS

    def get_paginator(self, operation_name: str) -> _Paginator:
        if not self.can_paginate(operation_name):
            raise OperationNotPageableError(operation_name=operation_name)
        return _Paginator(self, operation_name)


__all__ = ["MIN_PART_SIZE", "InMemoryBlobStore", "client_error"]
