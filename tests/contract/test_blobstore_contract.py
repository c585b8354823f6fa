"""One contract for the blob store port, run against boto3 on the real S3 (SeaweedFS,
through the ``settings`` fixture) and against the in-memory twin.

Where they differed, the twin was changed (the real adapter is the reference). Errors
are compared the way the code under test sees them: through ``infra.s3.translate``.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from blobledger.infra.memory.blobstore import InMemoryBlobStore
from blobledger.infra.s3 import S3ChecksumMismatch, S3NotFound, translate
from blobledger.schemas.errors import PermanentError

if TYPE_CHECKING:  # the static half of the contract (boto3's client is untyped: Any)
    from blobledger.schemas.ports import BlobStore

    def _port(twin: InMemoryBlobStore) -> BlobStore:
        return twin


MiB = 1024 * 1024


@dataclass
class Store:
    s3: Any
    bucket: str

    def key(self, name: str) -> str:
        """A key no other test (or earlier run) uses."""
        return f"contract/{uuid.uuid4().hex[:8]}/{name}"


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("s3", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return Store(InMemoryBlobStore(bucket="contract"), "contract")
    from blobledger.infra.s3 import make_s3_client

    settings = request.getfixturevalue("settings")
    return Store(make_s3_client(settings), settings.s3_bucket)


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def refused(call: Callable[[], Any]) -> tuple[str, int, Exception]:
    """The S3 error code, HTTP status and translated error of a refused call."""
    with pytest.raises(ClientError) as e:
        call()
    resp = e.value.response
    return resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"], translate(e.value)


def uploads_of(st: Store, key: str) -> list[str]:
    found = st.s3.list_multipart_uploads(Bucket=st.bucket, Prefix=key).get("Uploads", [])
    return [u["UploadId"] for u in found if u["Key"] == key]


# --- objects ------------------------------------------------------------------------------
def test_put_head_get(store: Store) -> None:
    st, key, data = store, store.key("hello.txt"), b"hello world"
    put = st.s3.put_object(
        Bucket=st.bucket,
        Key=key,
        Body=data,
        ChecksumCRC32=crc32(data),
        ContentType="text/plain",
        Metadata={"owner": "alice"},
    )
    assert put["ETag"] == f'"{md5(data)}"'
    head = st.s3.head_object(Bucket=st.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"owner": "alice"}
    assert head["LastModified"].tzinfo is not None
    got = st.s3.get_object(Bucket=st.bucket, Key=key)
    assert got["Body"].read() == data and got["ContentLength"] == len(data)


@pytest.mark.parametrize(
    ("header", "part", "content_range"),
    [
        ("bytes=2-4", b"llo", "bytes 2-4/11"),
        ("bytes=6-", b"world", "bytes 6-10/11"),
        ("bytes=-3", b"rld", "bytes 8-10/11"),
        ("bytes=8-30", b"rld", "bytes 8-10/11"),  # cut at the end
    ],
)
def test_get_range(store: Store, header: str, part: bytes, content_range: str) -> None:
    st, key = store, store.key("range")
    st.s3.put_object(Bucket=st.bucket, Key=key, Body=b"hello world")
    got = st.s3.get_object(Bucket=st.bucket, Key=key, Range=header)
    assert got["Body"].read() == part
    assert got["ContentLength"] == len(part) and got["ContentRange"] == content_range


def test_a_range_past_the_end_is_refused(store: Store) -> None:
    st, key = store, store.key("short")
    st.s3.put_object(Bucket=st.bucket, Key=key, Body=b"hello world")
    code, status, err = refused(
        lambda: st.s3.get_object(Bucket=st.bucket, Key=key, Range="bytes=20-30")
    )
    assert (code, status) == ("InvalidRange", 416) and isinstance(err, PermanentError)


def test_missing_keys(store: Store) -> None:
    st, key = store, store.key("absent")
    code, status, err = refused(lambda: st.s3.head_object(Bucket=st.bucket, Key=key))
    assert (code, status) == ("404", 404) and isinstance(err, S3NotFound)
    code, status, err = refused(lambda: st.s3.get_object(Bucket=st.bucket, Key=key))
    assert (code, status) == ("NoSuchKey", 404) and isinstance(err, S3NotFound)


def test_copy_then_delete(store: Store) -> None:
    st, src, dst = store, store.key("src"), store.key("dst")
    data = b"copied bytes"
    st.s3.put_object(Bucket=st.bucket, Key=src, Body=data, ContentType="text/plain")
    st.s3.copy_object(Bucket=st.bucket, Key=dst, CopySource={"Bucket": st.bucket, "Key": src})
    head = st.s3.head_object(Bucket=st.bucket, Key=dst)
    assert head["ETag"] == f'"{md5(data)}"' and head["ContentType"] == "text/plain"
    assert st.s3.get_object(Bucket=st.bucket, Key=dst)["Body"].read() == data

    st.s3.delete_object(Bucket=st.bucket, Key=dst)
    _, status, err = refused(lambda: st.s3.head_object(Bucket=st.bucket, Key=dst))
    assert status == 404 and isinstance(err, S3NotFound)
    st.s3.delete_object(Bucket=st.bucket, Key=dst)  # deleting what is gone is fine
    assert st.s3.head_object(Bucket=st.bucket, Key=src)["ContentLength"] == len(data)


def test_copy_of_a_missing_key_is_not_found(store: Store) -> None:
    st = store
    source = {"Bucket": st.bucket, "Key": st.key("nothing")}
    code, _, err = refused(
        lambda: st.s3.copy_object(Bucket=st.bucket, Key=st.key("dst"), CopySource=source)
    )
    assert code == "NoSuchKey" and isinstance(err, S3NotFound)


def test_listing_pages_through_keys_in_order(store: Store) -> None:
    st = store
    prefix = st.key("listed/")
    keys = [f"{prefix}{name}" for name in ("c", "a", "b")]
    for k in keys:
        st.s3.put_object(Bucket=st.bucket, Key=k, Body=k.encode())
    pages = list(
        st.s3.get_paginator("list_objects_v2").paginate(
            Bucket=st.bucket, Prefix=prefix, PaginationConfig={"PageSize": 2}
        )
    )
    listed = [o for page in pages for o in page.get("Contents", [])]
    assert [o["Key"] for o in listed] == sorted(keys)
    assert [o["Size"] for o in listed] == [len(k) for k in sorted(keys)]
    assert all(o["LastModified"].tzinfo is not None for o in listed)
    empty = st.s3.list_objects_v2(Bucket=st.bucket, Prefix=st.key("none/"))
    assert "Contents" not in empty and empty["KeyCount"] == 0


def test_a_wrong_object_checksum_is_refused(store: Store) -> None:
    st, key = store, store.key("bad-put")
    code, status, err = refused(
        lambda: st.s3.put_object(
            Bucket=st.bucket, Key=key, Body=b"hello", ChecksumCRC32=crc32(b"other")
        )
    )
    assert status == 400 and isinstance(err, S3ChecksumMismatch), code
    _, status, _ = refused(lambda: st.s3.head_object(Bucket=st.bucket, Key=key))
    assert status == 404


# --- multipart ----------------------------------------------------------------------------
def test_multipart_upload_round_trip(store: Store) -> None:
    st, key = store, store.key("multi.bin")
    parts_data = [b"a" * (5 * MiB), b"b" * 100]
    created = st.s3.create_multipart_upload(Bucket=st.bucket, Key=key, ChecksumAlgorithm="CRC32")
    uid = created["UploadId"]
    assert uploads_of(st, key) == [uid]
    sent = []
    for n, data in enumerate(parts_data, start=1):
        r = st.s3.upload_part(
            Bucket=st.bucket,
            Key=key,
            UploadId=uid,
            PartNumber=n,
            Body=data,
            ChecksumCRC32=crc32(data),
        )
        assert r["ETag"] == f'"{md5(data)}"' and r["ChecksumCRC32"] == crc32(data)
        sent.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": crc32(data)})
    listed = st.s3.list_parts(Bucket=st.bucket, Key=key, UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (1, 5 * MiB, sent[0]["ETag"]),
        (2, 100, sent[1]["ETag"]),
    ]
    assert not listed["IsTruncated"]

    st.s3.complete_multipart_upload(
        Bucket=st.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": sent}
    )
    head = st.s3.head_object(Bucket=st.bucket, Key=key)
    # S3's multipart ETag: the MD5 of the parts' MD5s, then the part count
    digests = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert head["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-2"'
    assert head["ContentLength"] == 5 * MiB + 100
    got = st.s3.get_object(Bucket=st.bucket, Key=key, Range=f"bytes={5 * MiB - 2}-{5 * MiB + 1}")
    assert got["Body"].read() == b"aabb"
    assert uploads_of(st, key) == []
    _, _, err = refused(lambda: st.s3.list_parts(Bucket=st.bucket, Key=key, UploadId=uid))
    assert isinstance(err, S3NotFound)


def test_abort_removes_the_upload(store: Store) -> None:
    st, key = store, store.key("aborted")
    uid = st.s3.create_multipart_upload(Bucket=st.bucket, Key=key)["UploadId"]
    st.s3.upload_part(Bucket=st.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"x" * 10)
    st.s3.abort_multipart_upload(Bucket=st.bucket, Key=key, UploadId=uid)
    assert uploads_of(st, key) == []
    code, _, err = refused(
        lambda: st.s3.upload_part(Bucket=st.bucket, Key=key, UploadId=uid, PartNumber=2, Body=b"y")
    )
    assert code == "NoSuchUpload" and isinstance(err, S3NotFound)
    code, _, err = refused(
        lambda: st.s3.abort_multipart_upload(Bucket=st.bucket, Key=key, UploadId="no-such-id")
    )
    assert code == "NoSuchUpload" and isinstance(err, S3NotFound)


def test_listing_uploads_filters_by_prefix(store: Store) -> None:
    st = store
    prefix = st.key("mpu/")
    keys = [f"{prefix}{n}" for n in ("b", "a", "c")]
    ids = {st.s3.create_multipart_upload(Bucket=st.bucket, Key=k)["UploadId"]: k for k in keys}
    st.s3.create_multipart_upload(Bucket=st.bucket, Key=st.key("elsewhere"))
    pages = st.s3.get_paginator("list_multipart_uploads").paginate(Bucket=st.bucket, Prefix=prefix)
    found = [u for page in pages for u in page.get("Uploads", [])]
    # no order is promised: AWS lists by key, SeaweedFS by upload id
    assert {u["UploadId"]: u["Key"] for u in found} == ids and len(found) == len(ids)
    assert all(u["Initiated"].tzinfo is not None for u in found)


def test_a_wrong_part_checksum_is_refused(store: Store) -> None:
    st, key = store, store.key("bad-part")
    uid = st.s3.create_multipart_upload(Bucket=st.bucket, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]
    code, status, err = refused(
        lambda: st.s3.upload_part(
            Bucket=st.bucket,
            Key=key,
            UploadId=uid,
            PartNumber=1,
            Body=b"part bytes",
            ChecksumCRC32=crc32(b"other bytes"),
        )
    )
    assert status == 400 and isinstance(err, S3ChecksumMismatch), code
    assert "Parts" not in st.s3.list_parts(Bucket=st.bucket, Key=key, UploadId=uid)


def _two_parts(st: Store, key: str, first_size: int, **create: Any) -> tuple[str, list[Any]]:
    uid = st.s3.create_multipart_upload(Bucket=st.bucket, Key=key, **create)["UploadId"]
    parts = []
    for n, data in ((1, b"a" * first_size), (2, b"b" * 10)):
        r = st.s3.upload_part(
            Bucket=st.bucket,
            Key=key,
            UploadId=uid,
            PartNumber=n,
            Body=data,
            ChecksumCRC32=crc32(data),
        )
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": crc32(data)})
    return uid, parts


def test_completion_refuses_bad_part_lists(store: Store) -> None:
    st, key = store, store.key("refused")
    uid, parts = _two_parts(st, key, 5 * MiB, ChecksumAlgorithm="CRC32")

    def complete(listed: list[Any]) -> tuple[str, int, Exception]:
        return refused(
            lambda: st.s3.complete_multipart_upload(
                Bucket=st.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": listed}
            )
        )

    assert complete([{**parts[0], "ETag": f'"{"0" * 32}"'}, parts[1]])[0] == "InvalidPart"
    assert complete([parts[1], parts[0]])[0] == "InvalidPartOrder"
    # an upload created with a checksum algorithm needs each part's checksum
    no_sums = [{k: v for k, v in p.items() if k != "ChecksumCRC32"} for p in parts]
    assert complete(no_sums)[0] == "InvalidRequest"
    _, _, err = complete([{**parts[0], "ChecksumCRC32": crc32(b"zz")}, parts[1]])
    assert isinstance(err, S3ChecksumMismatch)
    assert uploads_of(st, key) == [uid]  # nothing was completed


def test_completion_refuses_a_small_part_before_the_last(store: Store) -> None:
    st, key = store, store.key("small")
    uid, parts = _two_parts(st, key, 10)
    code, status, err = refused(
        lambda: st.s3.complete_multipart_upload(
            Bucket=st.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
        )
    )
    assert (code, status) == ("EntityTooSmall", 400) and isinstance(err, PermanentError)


# --- client side --------------------------------------------------------------------------
def test_presigned_url_is_a_string_naming_the_key(store: Store) -> None:
    st, key = store, store.key("shared.txt")
    url = st.s3.generate_presigned_url(
        "get_object", Params={"Bucket": st.bucket, "Key": key}, ExpiresIn=60
    )
    assert isinstance(url, str) and key.rsplit("/", 1)[-1] in url


def test_parameters_are_validated_before_sending(store: Store) -> None:
    st = store
    with pytest.raises(ParamValidationError):
        st.s3.put_object(Bucket=st.bucket, Key=st.key("x"), Body=b"x", Colour="blue")
    with pytest.raises(ParamValidationError):
        st.s3.complete_multipart_upload(Bucket=st.bucket, Key=st.key("x"))  # no UploadId
