"""Streaming blob reads: whole (SHA-256 verified at end of stream) or by byte range, plus
presigned GET URLs. The S3 client is injected.

A broken stream is resumed with a ranged GET from the current position (up to
``attempts`` times) instead of failing a long download; the hash runs over the bytes as
delivered, so a resumed read is verified exactly like an unbroken one.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from blobledger.infra.s3 import S3NotFound, translate
from blobledger.schemas.ports import BlobStore
from blobledger.schemas.errors import (
    BlobIntegrityError,
    ConfigurationError,
    NotFoundError,
    TransientError,
    ValidationError,
)
from blobledger.schemas.views import BlobInfo

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from blobledger.producers.client import Client

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``start`` inclusive, ``end`` inclusive (None = to the end), as in HTTP ranges."""

    start: int
    end: int | None = None

    @classmethod
    def parse(cls, text: str) -> ByteRange:
        """``"100-199"``, ``"100-"`` or ``"-500"`` (the last 500 bytes: needs the size)."""
        try:
            a, b = text.split("-", 1)
            if not a:
                raise ValidationError(
                    "suffix ranges (-N) need the size; use ByteRange.last(n, size)"
                )
            r = cls(int(a), int(b) if b else None)
        except ValueError as e:
            raise ValidationError(f"bad byte range {text!r}: use START-END or START-") from e
        if r.start < 0 or (r.end is not None and r.end < r.start):
            raise ValidationError(f"bad byte range {text!r}")
        return r

    def header(self) -> str:
        return f"bytes={self.start}-{'' if self.end is None else self.end}"


class BlobReader(io.RawIOBase):
    """A read-only stream of one blob (or a range of it)."""

    def __init__(
        self,
        s3: BlobStore,
        bucket: str,
        key: str,
        *,
        sha256: str | None = None,
        size: int | None = None,
        byte_range: ByteRange | None = None,
        attempts: int = 4,
    ) -> None:
        super().__init__()
        self._s3, self.bucket, self.key = s3, bucket, key
        self.sha256, self.size, self.range = sha256, size, byte_range
        self._attempts = attempts
        self._start = byte_range.start if byte_range else 0
        self._end = byte_range.end if byte_range else None  # inclusive
        self._pos = self._start
        # only a whole-object read can be checked against the whole-object hash
        self._hasher = hashlib.sha256() if sha256 and byte_range is None else None
        self.verified = False
        self._body: Any = None
        self._eof = False
        self._open()

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self._pos > 0 or self._end is not None:
            kwargs["Range"] = f"bytes={self._pos}-{'' if self._end is None else self._end}"
        try:
            resp = self._s3.get_object(**kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code == "InvalidRange":
                self._eof = True
                return
            err = translate(e)
            if isinstance(err, S3NotFound):
                raise NotFoundError(f"blob {self.key} is not in bucket {self.bucket}") from e
            raise err from e
        except Exception as e:
            raise translate(e) from e
        self._body = resp["Body"]
        if self.size is None and self.range is None:
            self.size = int(resp.get("ContentLength", 0))

    def readable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        if self._eof or len(b) == 0:
            return 0
        want = len(b)
        if self._end is not None:
            want = min(want, self._end + 1 - self._pos)
            if want <= 0:
                return self._finish()
        for attempt in range(1, self._attempts + 1):
            try:
                data = self._body.read(want) if self._body is not None else b""
                break
            except (Urllib3Error, BotoCoreError, ConnectionError, TimeoutError) as e:
                if attempt == self._attempts:
                    raise TransientError(f"reading {self.key} at byte {self._pos}: {e}") from e
                log.warning("blob.read_resumed", key=self.key, position=self._pos, error=str(e))
                self._body.close()
                self._open()
        if not data:
            return self._finish()
        n = len(data)
        b[:n] = data
        self._pos += n
        if self._hasher is not None:
            self._hasher.update(data)
        return n

    def _finish(self) -> int:
        if not self._eof:
            self._eof = True
            if self._hasher is not None:
                got = self._hasher.hexdigest()
                if self.size is not None and self._pos != self.size:
                    raise BlobIntegrityError(
                        f"{self.key}: read {self._pos} bytes, expected {self.size}"
                    )
                if got != self.sha256:
                    raise BlobIntegrityError(
                        f"{self.key}: content hashes to {got}, expected {self.sha256}"
                    )
                self.verified = True
        return 0

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


def open_blob(
    s3: BlobStore,
    bucket: str,
    key: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    byte_range: ByteRange | None = None,
) -> BlobReader:
    """Open a blob for streaming. Reading a whole blob to the end verifies ``sha256``
    (``BlobIntegrityError`` otherwise); a range is served as stored."""
    return BlobReader(s3, bucket, key, sha256=sha256, size=size, byte_range=byte_range)


#: SigV4's own cap on a presigned URL's lifetime (``X-Amz-Expires``): S3 refuses longer ones
SIGV4_MAX_EXPIRES = 7 * 24 * 3600
#: what a URL lives when the caller does not say (unless the configured maximum is lower)
DEFAULT_EXPIRES = 3600


def check_expires(expires: int | None, max_seconds: int) -> int:
    """The lifetime to sign with: ``expires`` (default one hour, or the maximum if lower)
    when it lies in 1..``max_seconds``. A URL is a bearer credential nobody can revoke, so
    the bound is checked here, before signing, not left to the server: SigV2 had none."""
    if not 1 <= max_seconds <= SIGV4_MAX_EXPIRES:
        raise ConfigurationError(
            f"BLOBLEDGER_PRESIGN_MAX_SECONDS={max_seconds} is outside 1..{SIGV4_MAX_EXPIRES} "
            "(SigV4 presigned URLs live at most 7 days)"
        )
    if expires is None:
        return min(DEFAULT_EXPIRES, max_seconds)
    if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= max_seconds:
        raise ValidationError(
            f"a presigned URL's lifetime must be between 1 and {max_seconds} seconds "
            f"(BLOBLEDGER_PRESIGN_MAX_SECONDS), not {expires!r}"
        )
    return expires


def _attachment(filename: str) -> str:
    """A ``Content-Disposition: attachment`` value (RFC 6266) for any name: an ASCII
    fallback with quotes, backslashes and control characters replaced, and the exact name
    as ``filename*`` (RFC 5987). Quoting the raw name could end the quoted string early or
    carry a CR/LF into the response header S3 builds from it."""
    safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{safe or "download"}"'
    if safe != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def presigned_get_url(
    s3: BlobStore,
    bucket: str,
    key: str,
    *,
    expires: int | None = None,
    max_seconds: int = SIGV4_MAX_EXPIRES,
    filename: str | None = None,
    content_type: str | None = None,
) -> str:
    """A time-limited GET URL (no credentials needed by whoever holds it). It grants read
    to anyone for its lifetime: callers check the requester's read permission first
    (:func:`presign_object_blob` does)."""
    seconds = check_expires(expires, max_seconds)
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if filename:
        params["ResponseContentDisposition"] = _attachment(filename)
    if content_type:
        params["ResponseContentType"] = content_type
    return s3.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)


@dataclass(frozen=True)
class ObjectBlob:
    """An object's committed blob opened for reading, and what the caller should know."""

    reader: BlobReader
    object_id: str
    version: int
    sha256: str
    size: int
    key: str
    pending_upload_id: str | None
    #: set when a newer upload is pending: the reader serves the last committed blob
    notice: str | None


def _committed(
    client: Client, ref: str, version: int | None
) -> tuple[str, int, BlobInfo, str | None, str | None]:
    """(object id, version, committed blob, pending upload, notice) of ``ref`` at
    ``version`` (default current), read through ``client``: its read permission applies."""
    view = client.get(ref) if version is None else client.as_of(ref, version=version).snapshot
    blob, pending = view.blob, view.pending_upload_id
    if blob is None:
        why = f"; upload {pending} is still pending" if pending else ""
        raise NotFoundError(
            f"object {view.key!r} (version {view.version}) has no committed blob{why}"
        )
    notice = None
    if pending:
        notice = (
            f"upload {pending} is still pending; serving the last committed blob "
            f"(sha256 {blob.sha256[:12]}..., {blob.size} bytes)"
        )
    return view.object_id, view.version, blob, pending, notice


def open_object_blob(
    client: Client,
    ref: str,
    *,
    s3: BlobStore,
    version: int | None = None,
    byte_range: ByteRange | None = None,
) -> ObjectBlob:
    """Open the committed blob of ``ref`` (at ``version``, default current) through
    ``client`` (authorization and the read model)."""
    object_id, at_version, blob, pending, notice = _committed(client, ref, version)
    reader = open_blob(
        s3,
        client.settings.s3_bucket,
        blob.key,
        sha256=blob.sha256,
        size=blob.size,
        byte_range=byte_range,
    )
    return ObjectBlob(
        reader, object_id, at_version, blob.sha256, blob.size, blob.key, pending, notice
    )


@dataclass(frozen=True)
class PresignedBlob:
    """A presigned GET URL of an object's committed blob, and what it serves."""

    url: str
    expires_seconds: int
    object_id: str
    version: int
    sha256: str
    size: int
    key: str
    pending_upload_id: str | None
    notice: str | None


def presign_object_blob(
    client: Client,
    ref: str,
    *,
    s3: BlobStore,
    version: int | None = None,
    expires: int | None = None,
    filename: str | None = None,
) -> PresignedBlob:
    """A presigned URL of ``ref``'s committed blob (at ``version``, default current), signed
    only after ``client`` may read the object. The lifetime is checked first (1 to
    ``presign_max_seconds``), so a bad one fails without a lookup."""
    seconds = check_expires(expires, client.settings.presign_max_seconds)
    object_id, at_version, blob, pending, notice = _committed(client, ref, version)
    url = presigned_get_url(
        s3,
        client.settings.s3_bucket,
        blob.key,
        expires=seconds,
        max_seconds=client.settings.presign_max_seconds,
        filename=filename,
    )
    return PresignedBlob(
        url, seconds, object_id, at_version, blob.sha256, blob.size, blob.key, pending, notice
    )
