"""S3 client factory (boto3) and translation of S3 errors into the project's hierarchy.

botocore's own retries are off: retries are ours (tenacity, ``infra.retry``) so they are
jittered, bounded by a per-upload budget, and visible to the circuit breaker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from blobledger.infra.settings import Settings
from blobledger.schemas.errors import PermanentError, TransientError
from blobledger.schemas.ports import BlobStore


class S3NotFound(PermanentError):
    """The key (or multipart upload) does not exist."""

    code = "not_found"


class S3ChecksumMismatch(PermanentError):
    """S3 rejected a part whose bytes did not match the checksum we sent (BadDigest)."""

    code = "checksum_mismatch"


_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "503",
        "500",
        "502",
        "504",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchUpload", "NotFound"})
_DIGEST_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}
)


def make_s3_client(settings: Settings, *, max_pool_connections: int | None = None) -> BlobStore:
    """A thread-safe boto3 S3 client for ``settings.s3_url``.

    Share one per process: its connection pool is what the parallel parts run on."""
    config = Config(
        region_name=settings.s3_region,
        # SigV4 for presigned URLs too: left unset, botocore presigns in a region that still
        # knows SigV2 (us-east-1) with legacy query auth (AWSAccessKeyId/Signature/Expires),
        # which SeaweedFS rejects (SignatureDoesNotMatch) once response-* overrides such as
        # the download filename are signed, and which has no lifetime cap. Requests were
        # SigV4 already; only presigning changes
        signature_version="s3v4",
        s3={
            # SeaweedFS/MinIO and custom endpoints do not resolve <bucket>.host names
            "addressing_style": "path",
            # over plain http botocore would SHA-256 every part just to sign it; SeaweedFS
            # does not verify that hash, so it is pure CPU. Integrity comes from the
            # per-part checksum we send (and the server verifies) and the whole-blob SHA-256
            "payload_signing_enabled": False,
        },
        # parallel parts of a few uploads plus HEAD/list calls without waiting for a socket
        max_pool_connections=max_pool_connections or max(16, 2 * settings.max_in_flight_parts + 4),
        # fail fast on a dead endpoint so the breaker and backoff take over
        connect_timeout=5,
        # a 16..512 MiB part on a busy server can take a while to be acknowledged
        read_timeout=120,
        # retries are tenacity's (jittered, budgeted, breaker-aware); botocore makes one attempt
        retries={"total_max_attempts": 1, "mode": "standard"},
        # we send an explicit per-part CRC32 ourselves; botocore must not add another pass
        request_checksum_calculation="when_required",
        # full-object hashes are verified by the reader (SHA-256), not per response
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        config=config,
    )


def error_code(e: BaseException) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return str(
            err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        )
    return type(e).__name__


def translate(e: BaseException) -> TransientError | PermanentError:
    """Map a botocore exception to TransientError (worth retrying) or PermanentError."""
    if isinstance(e, (TransientError, PermanentError)):
        return e
    inner = getattr(e, "kwargs", {}).get("error") if isinstance(e, HTTPClientError) else None
    if isinstance(inner, (TransientError, PermanentError)):
        return inner  # our own request body (a source) failed while being sent
    if isinstance(e, ClientError):
        code = error_code(e)
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        op = getattr(e, "operation_name", "?")
        if code in _NOT_FOUND_CODES or status == 404:
            return S3NotFound(f"s3 {op}: {code}")
        if code in _DIGEST_CODES:
            return S3ChecksumMismatch(
                f"s3 {op}: {code}: the bytes sent do not match their checksum"
            )
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"s3 {op}: {code} (HTTP {status}); retrying may help")
        return PermanentError(f"s3 {op}: {code} (HTTP {status}): {e}")
    if isinstance(
        e,
        (
            EndpointConnectionError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ConnectionClosedError,
            BotoConnectionError,
            HTTPClientError,
        ),
    ):
        return TransientError(f"s3 unreachable: {e} (is the S3 endpoint up?)")
    if isinstance(e, (ConnectionError, TimeoutError)):
        return TransientError(f"s3 connection: {e}")
    if isinstance(e, BotoCoreError):
        return PermanentError(f"s3 client: {e}")
    return PermanentError(f"s3: {type(e).__name__}: {e}")


def head(s3: BlobStore, bucket: str, key: str) -> Mapping[str, Any] | None:
    """HEAD an object: its metadata, or None when it does not exist."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except Exception as e:
        err = translate(e)
        if isinstance(err, S3NotFound):
            return None
        raise err from e
