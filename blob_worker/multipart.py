"""One S3 multipart upload: adopted or created, parts sent or kept, completed once.

Resume: an open multipart upload for the same key (a redelivered command after a crash)
is adopted; its listed parts are kept when size and ETag (the part's MD5 on
S3/SeaweedFS) match our bytes, everything else is re-sent. The upload's abort is
registered as a failure cleanup the moment it exists (created or adopted) and dropped
when it is completed, so a failure anywhere in between aborts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from blobledger.blob_worker.cleanups import FailureCleanups
from blobledger.blob_worker.s3calls import S3Calls
from blobledger.infra import metrics, tracing
from blobledger.infra.s3 import S3NotFound
from blobledger.schemas.errors import TransientError

log = structlog.get_logger(__name__)


class ListedPart(NamedTuple):
    """A part an earlier attempt left in the upload."""

    size: int
    etag: str  # unquoted: the MD5 of its bytes on S3/SeaweedFS
    modified: Any  # LastModified; SeaweedFS lists a re-sent part once per attempt


class PartOutcome(NamedTuple):
    number: int
    crc: str
    etag: str  # quoted, as S3 returns it and wants it back on completion
    bytes_sent: int  # 0 for a part kept from an earlier attempt
    resumed: bool


class MultipartUpload:
    def __init__(
        self,
        calls: S3Calls,
        key: str,
        upload_id: str,
        listed: dict[int, ListedPart],
        *,
        cancel: threading.Event,
        drop_abort: Callable[[], None],
    ) -> None:
        self._calls, self._cancel, self._listed = calls, cancel, listed
        self.key, self.upload_id = key, upload_id
        self._drop_abort = drop_abort
        self.is_open = True

    @classmethod
    def open(
        cls, calls: S3Calls, key: str, *, cancel: threading.Event, cleanups: FailureCleanups
    ) -> MultipartUpload:
        """Adopt the newest open multipart upload for ``key`` and list its parts, or start
        a new one; either way its abort is registered in ``cleanups`` at once."""
        found = calls.call(
            "list_multipart_uploads", cancel=cancel, Bucket=calls.bucket, Prefix=key
        ).get("Uploads", [])
        mine = sorted((u for u in found if u["Key"] == key), key=lambda u: u["Initiated"])
        if mine:
            upload_id = mine[-1]["UploadId"]
            drop = cls._register_abort(calls, key, upload_id, cleanups)
            listed = _list_parts(calls, key, upload_id, cancel)
            log.info("multipart.resumed", key=key, multipart_id=upload_id, parts=len(listed))
        else:
            r = calls.call(
                "create_multipart_upload",
                cancel=cancel,
                Bucket=calls.bucket,
                Key=key,
                ChecksumAlgorithm="CRC32",
            )
            upload_id = r["UploadId"]
            drop = cls._register_abort(calls, key, upload_id, cleanups)
            listed = {}
            log.info("multipart.created", key=key, multipart_id=upload_id)
        return cls(calls, key, upload_id, listed, cancel=cancel, drop_abort=drop)

    @staticmethod
    def _register_abort(
        calls: S3Calls, key: str, upload_id: str, cleanups: FailureCleanups
    ) -> Callable[[], None]:
        return cleanups.add(
            f"abort multipart upload {upload_id} of {key}", lambda: calls.abort(key, upload_id)
        )

    def upload_part(
        self,
        number: int,
        length: int,
        crc: str,
        *,
        body: Callable[[], Any],
        md5: Callable[[], str],
    ) -> PartOutcome:
        """Send part ``number`` (``body`` builds the request body per try), or keep the
        one an earlier attempt left if it holds the same bytes: ``md5`` is computed only
        for a listed part of the same length. Called from the part pool (in the transfer's
        context: its span is the part's parent, see :class:`.pump.PartPump`)."""
        with tracing.event_span(
            "blobledger.upload_part",
            attributes={"blobledger.part_number": number, "blobledger.part_bytes": length},
        ) as span:
            listed = self._listed.get(number)
            if listed is not None and listed.size == length and md5() == listed.etag:
                span.set_attribute("blobledger.part_resumed", True)
                return PartOutcome(number, crc, f'"{listed.etag}"', 0, True)
            r = self._calls.call(
                "upload_part",
                cancel=self._cancel,
                Bucket=self._calls.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                ChecksumCRC32=crc,
                body=body,
            )
        metrics.record_part_uploaded(length)
        return PartOutcome(number, crc, r["ETag"], length, False)

    def complete(self, parts: list[PartOutcome], size: int) -> None:
        """Complete the upload from ``parts``. If it vanished, another worker holding the
        same content completed it (fine if ``key`` now has ``size`` bytes) or the reaper
        aborted it (transient: the retry starts over). Either way it is no longer open."""
        entries = [
            {"PartNumber": p.number, "ChecksumCRC32": p.crc, "ETag": p.etag}
            for p in sorted(parts, key=lambda p: p.number)
        ]
        try:
            self._calls.call(
                "complete_multipart_upload",
                cancel=self._cancel,
                Bucket=self._calls.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": entries},
            )
        except S3NotFound as e:
            hit = self._calls.head(self.key)
            if hit is None or int(hit["ContentLength"]) != size:
                self._closed()
                raise TransientError(f"multipart upload for {self.key} vanished; restarting") from e
        self._closed()

    def _closed(self) -> None:
        self.is_open = False
        self._drop_abort()


def _list_parts(
    calls: S3Calls, key: str, upload_id: str, cancel: threading.Event
) -> dict[int, ListedPart]:
    listed: dict[int, ListedPart] = {}
    marker = 0
    while True:
        r = calls.call(
            "list_parts",
            cancel=cancel,
            Bucket=calls.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumberMarker=marker,
            MaxParts=1000,
        )
        for p in r.get("Parts", []):
            # SeaweedFS lists a re-sent part once per attempt: keep the newest
            number, when = p["PartNumber"], p.get("LastModified")
            prev = listed.get(number)
            if prev is None or (
                when is not None and prev.modified is not None and when >= prev.modified
            ):
                listed[number] = ListedPart(int(p["Size"]), p["ETag"].strip('"'), when)
        if not r.get("IsTruncated"):
            break
        marker = int(r["NextPartNumberMarker"])
    return listed
