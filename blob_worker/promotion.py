"""Faster promotion of a staging object to its content-addressed key on SeaweedFS.

A stream without a declared hash is uploaded to ``staging/<upload_id>`` and only then
renamed to ``blobs/sha256/..``. S3 has no rename: CopyObject on SeaweedFS rewrites every
byte (7.3 s per GiB measured, as long as the upload itself). SeaweedFS's filer renames an
entry in its metadata (14 ms measured for 1 GiB), so when the S3 endpoint is a SeaweedFS
whose filer answers, that is used, and CopyObject remains the portable fallback (AWS,
MinIO, a filer that refuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import structlog
import urllib3

from blobledger.blob_worker.planning import MiB, plan_parts
from blobledger.blob_worker.s3calls import S3Calls
from blobledger.blob_worker.transfer_types import Promoter
from blobledger.infra.settings import Settings
from blobledger.infra.stack.seaweed import filer_keys, filer_token

if TYPE_CHECKING:
    from blobledger.blob_worker.transfer import Transfer

log = structlog.get_logger(__name__)

#: where SeaweedFS's S3 gateway keeps buckets in the filer namespace (its default)
BUCKETS_FOLDER = "/buckets"
S3_MAX_COPY_SIZE = 5 * 1024**3


class ServerSideCopy:
    """Promotion by CopyObject (<= 5 GiB) or UploadPartCopy: portable; on AWS the bytes
    never leave S3. On SeaweedFS it rewrites the data (~140 MB/s), which is why local files
    (the common case) avoid staging altogether."""

    def __init__(self, calls: S3Calls, *, max_blob_size: int) -> None:
        self._calls = calls
        self._max_blob_size = max_blob_size

    def promote(self, bucket: str, src: str, dst: str, size: int) -> None:
        calls = self._calls
        source = {"Bucket": bucket, "Key": src}
        if size <= S3_MAX_COPY_SIZE:
            calls.call("copy_object", Bucket=bucket, Key=dst, CopySource=source)
            return
        plan = plan_parts(size, min_part_size=512 * MiB, max_blob_size=self._max_blob_size)
        mpu = calls.call("create_multipart_upload", Bucket=bucket, Key=dst)["UploadId"]
        try:  # aborted on any failure from the moment it exists
            parts = []
            for p in plan.parts():
                r = calls.call(
                    "upload_part_copy",
                    Bucket=bucket,
                    Key=dst,
                    UploadId=mpu,
                    PartNumber=p.number,
                    CopySource=source,
                    CopySourceRange=f"bytes={p.offset}-{p.offset + p.length - 1}",
                )
                parts.append({"PartNumber": p.number, "ETag": r["CopyPartResult"]["ETag"]})
            calls.call(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=dst,
                UploadId=mpu,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            calls.abort(dst, mpu)
            raise


class SeaweedFilerRename:
    """Metadata-only rename through the SeaweedFS filer HTTP API."""

    def __init__(
        self,
        filer_url: str,
        *,
        pool: urllib3.PoolManager | None = None,
        signing_key: str | None = None,
    ) -> None:
        self.filer_url = filer_url.rstrip("/")
        self._pool = pool or urllib3.PoolManager(maxsize=4)
        #: the filer's write JWT key: the embedded stack's filer refuses unsigned writes
        self._signing_key = signing_key

    @classmethod
    def detect(cls, settings: Settings, *, timeout: float = 1.0) -> SeaweedFilerRename | None:
        """The strategy if a SeaweedFS filer answers on the S3 host at
        ``settings.weed_filer_port`` (the embedded stack's layout), else None. On loopback
        its requests are signed with the filer keys from the embedded stack's data dir
        (when this user can read them); they are never sent to another host."""
        host = urlsplit(settings.s3_url).hostname or "127.0.0.1"
        url = f"http://{host}:{settings.weed_filer_port}"
        keys = filer_keys(settings) if host in ("127.0.0.1", "localhost", "::1") else None
        headers = {"Authorization": f"Bearer {filer_token(keys[1])}"} if keys else {}
        pool = urllib3.PoolManager(maxsize=4)
        try:
            resp = pool.request("HEAD", url + "/", headers=headers, timeout=timeout, retries=False)
        except urllib3.exceptions.HTTPError:
            return None
        if not resp.headers.get("Server", "").startswith("SeaweedFS"):
            return None
        return cls(url, pool=pool, signing_key=keys[0] if keys else None)

    def rename(self, bucket: str, src: str, dst: str) -> bool:
        """True when the filer moved ``src`` to ``dst``."""
        target = f"{self.filer_url}{BUCKETS_FOLDER}/{quote(bucket)}/{quote(dst)}"
        source = f"{BUCKETS_FOLDER}/{bucket}/{src}"
        headers = {}
        if self._signing_key:  # this move in this bucket only, for half a minute
            token = filer_token(
                self._signing_key, methods=("POST",), prefixes=(f"{BUCKETS_FOLDER}/{bucket}",)
            )
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = self._pool.request(
                "POST",
                f"{target}?mv.from={quote(source)}",
                body=b"",
                headers=headers,
                timeout=30.0,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            log.warning("promotion.rename_failed", src=src, dst=dst, error=str(e))
            return False
        if resp.status >= 300:
            log.warning("promotion.rename_refused", src=src, dst=dst, status=resp.status)
            return False
        return True


class RenameOrCopy:
    """Try the filer rename; fall back to the portable server-side copy."""

    def __init__(self, rename: SeaweedFilerRename, copy: Promoter) -> None:
        self._rename, self._copy = rename, copy

    def promote(self, bucket: str, src: str, dst: str, size: int) -> None:
        if self._rename.rename(bucket, src, dst):
            log.info("promotion.renamed", src=src, dst=dst, size=size)
            return
        self._copy.promote(bucket, src, dst, size)


def promoter_for(settings: Settings, transfer: Transfer) -> Promoter:
    """The best promotion strategy for ``settings``' S3 (``transfer``'s S3 calls copy)."""
    copy = ServerSideCopy(transfer.calls, max_blob_size=transfer.opts.max_blob_size)
    rename = SeaweedFilerRename.detect(settings)
    return RenameOrCopy(rename, copy) if rename is not None else copy
