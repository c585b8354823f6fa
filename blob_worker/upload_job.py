"""One run of one upload: its inputs and collaborators (passed in, never reached for), what
it has open (as failure cleanups), and the steps every strategy shares: dedup by hash, a
single PUT, a multipart upload, promotion from staging, the final check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, NamedTuple

import structlog

from blobledger.blob_worker.cleanups import FailureCleanups
from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.multipart import MultipartUpload, PartOutcome
from blobledger.blob_worker.progress import Meter
from blobledger.blob_worker.pump import PartPump
from blobledger.blob_worker.s3calls import S3Calls
from blobledger.blob_worker.transfer_types import (
    STAGING_PREFIX,
    Promoter,
    TransferOptions,
    TransferResult,
    UploadSpec,
    check_declared_size,
    content_key,
)
from blobledger.infra import metrics, tracing
from blobledger.schemas.errors import TransientError

log = structlog.get_logger(__name__)


class Stored(NamedTuple):
    """What a strategy wrote, before promotion from staging and the final check."""

    key: str
    sha256: str
    size: int
    part_count: int
    bytes_sent: int
    resumed_parts: int


class UploadJob:
    def __init__(
        self,
        spec: UploadSpec,
        opts: TransferOptions,
        *,
        calls: S3Calls,
        pool: Executor,
        cancel: threading.Event,
        meter: Meter,
        promoter: Promoter,
        cache: HashCache | None = None,
    ) -> None:
        self.spec, self.opts = spec, opts
        self.calls, self.pool, self.cancel, self.meter = calls, pool, cancel, meter
        self.promoter, self.cache = promoter, cache
        self.bucket = opts.bucket
        self.cleanups = FailureCleanups()
        self.started = time.monotonic()
        self._multipart: MultipartUpload | None = None
        self._drop_staged: Callable[[], None] | None = None

    @property
    def open_multipart_upload(self) -> MultipartUpload | None:
        """The multipart upload a cancel leaves open for a resume, if any."""
        m = self._multipart
        return m if m is not None and m.is_open else None

    def call(self, op: str, **kwargs: Any) -> Any:
        return self.calls.call(op, cancel=self.cancel, **kwargs)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def fail(self) -> None:
        """A failure for good leaves nothing behind: undo what is still open."""
        self.cleanups.run()
        self.meter.final("failed")

    # --- dedup ---------------------------------------------------------------------------
    def stored_size(self, sha: str) -> int | None:
        """The size of the blob stored for ``sha``, None if there is none."""
        hit = self.calls.head(content_key(sha))
        return None if hit is None else int(hit["ContentLength"])

    def dedup_hit(self, sha: str, size: int | None) -> TransferResult | None:
        """The stored blob for ``sha`` if there is one of ``size`` bytes (any, if None).
        Only for a hash the requester's own source was shown to have (read and hashed, or
        the stat cache for that very file): a hash alone proves nothing."""
        self.meter.phase("dedup")
        key = content_key(sha)
        hit = self.calls.head(key)
        if hit is None:
            return None
        stored = int(hit["ContentLength"])
        if size is not None and stored != size:
            log.warning("dedup.size_differs", key=key, stored=stored, expected=size)
            return None
        check_declared_size(self.spec.declared_size, stored, what="the blob with that hash")
        log.info("dedup.hit", key=key, size=stored)
        return TransferResult(sha, stored, key, True, 0, 0, self.elapsed_ms())

    # --- writing -------------------------------------------------------------------------
    def pump(self) -> PartPump:
        return PartPump(self.pool, self.opts.max_in_flight, self.cancel)

    def put(self, key: str, sha: str, size: int, crc: str, body: Callable[[], Any]) -> Stored:
        """A blob that fits one part: a plain PUT, no multipart round trips."""
        part = {"blobledger.part_bytes": size}
        with tracing.event_span("blobledger.put_object", attributes=part):
            self.call("put_object", Bucket=self.bucket, Key=key, ChecksumCRC32=crc, body=body)
        metrics.record_part_uploaded(size)
        self._created(key)
        self.meter.add(size)
        return Stored(key, sha, size, 1, size, 0)

    def open_multipart(self, key: str) -> MultipartUpload:
        self._multipart = MultipartUpload.open(
            self.calls, key, cancel=self.cancel, cleanups=self.cleanups
        )
        return self._multipart

    def complete(
        self, upload: MultipartUpload, parts: list[PartOutcome], sha: str, size: int
    ) -> Stored:
        self.meter.phase("completing")
        upload.complete(parts, size)
        self._created(upload.key)
        return Stored(
            upload.key,
            sha,
            size,
            len(parts),
            sum(p.bytes_sent for p in parts),
            sum(1 for p in parts if p.resumed),
        )

    def _created(self, key: str) -> None:
        """A completed staging object is deleted if the upload fails before promotion."""
        if key.startswith(STAGING_PREFIX):
            self._drop_staged = self.cleanups.add(
                f"delete {key}",
                lambda: self.calls.call("delete_object", Bucket=self.bucket, Key=key),
            )

    # --- finishing -----------------------------------------------------------------------
    def finish(self, stored: Stored) -> TransferResult:
        """Promote a staging object to its content key, then check the blob is there."""
        key, dedup = stored.key, False
        if key.startswith(STAGING_PREFIX):
            dedup = self._promote(stored)
            key = content_key(stored.sha256)
        hit = self.calls.head(key)
        if hit is None or int(hit["ContentLength"]) != stored.size:
            raise TransientError(f"{key} not visible with {stored.size} bytes after upload")
        log.info(
            "upload.stored",
            key=key,
            size=stored.size,
            parts=stored.part_count,
            bytes_sent=stored.bytes_sent,
            resumed_parts=stored.resumed_parts,
        )
        return TransferResult(
            stored.sha256,
            stored.size,
            key,
            dedup,
            stored.part_count,
            stored.bytes_sent,
            self.elapsed_ms(),
            stored.resumed_parts,
        )

    def _promote(self, stored: Stored) -> bool:
        """Move the staging object to its content key; True when that key already held
        the same content (dedup: nothing is promoted, the staging copy is dropped)."""
        final = content_key(stored.sha256)
        hit = self.calls.head(final)
        dedup = hit is not None and int(hit["ContentLength"]) == stored.size
        if not dedup:
            self.meter.phase("promoting")  # a server-side copy can take as long as the upload
            self.promoter.promote(self.bucket, stored.key, final, stored.size)
        self.call("delete_object", Bucket=self.bucket, Key=stored.key)
        if self._drop_staged is not None:
            self._drop_staged()
            self._drop_staged = None
        return dedup
