"""Streaming, parallel, content-addressed upload of one source to S3 (injected client).

``Transfer.run`` checks the command, opens the source within the worker's source policy
(:mod:`.sources`, :mod:`.sourcepolicy`) and hands it to the first compatible strategy
(:mod:`.strategies`). A hash is not a capability: a declared hash that is already stored
is a dedup hit only once this requester's own source has been read and hashes to it (or
the worker's stat cache holds that hash for this very file), so knowing a hash never
attaches someone else's blob:

* ``HashFirstFile`` (local files, default): hash first, then upload straight to the
  content key, so a stored hash costs 0 bytes and a new blob needs no staging copy.
* ``StreamedFile`` (local files, ``local_files="stream"``): hash while uploading to
  ``staging/<upload_id>``, then promote (:mod:`.promotion`): one pass, but stored
  content is sent before its hash shows it.
* ``BufferedStream`` (http, any sequential source): parts read into bounded buffers;
  to the content key with a declared hash, else to staging and promoted; a declared hash
  already stored is proven by reading and hashing the stream, sending nothing.

Per-part checksum: CRC32 (``x-amz-checksum-crc32``), verified by SeaweedFS and AWS. It
is ~2x cheaper than MD5 and SHA-256 on the client and the server, and the whole blob is
covered by its SHA-256 anyway. Resume: an open multipart upload for the same key is
adopted and its matching parts kept (:mod:`.multipart`).

The pieces: :mod:`.transfer_types` (the public types, re-exported here), :mod:`.s3calls`
(retries, breaker, cancel), :mod:`.upload_job` (one run's shared steps and failure
cleanups), :mod:`.hashing` (the local-file pass), :mod:`.pump` (bounded parallel parts),
:mod:`.progress` (the meter).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from blobledger.blob_worker.cancel import on_cancel
from blobledger.blob_worker.daemonpool import DaemonPool
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.hashcache import HashCache
from blobledger.blob_worker.planning import plan_parts
from blobledger.blob_worker.progress import Meter
from blobledger.blob_worker.promotion import ServerSideCopy
from blobledger.blob_worker.s3calls import S3Calls
from blobledger.blob_worker.sources import GuardedHttp, HttpSource, open_source
from blobledger.blob_worker.strategies import choose_strategy
from blobledger.blob_worker.transfer_types import (
    SHA256_HEX,
    STAGING_PREFIX,
    Progress,
    Promoter,
    TransferCancelled,
    TransferOptions,
    TransferResult,
    UploadSpec,
    check_declared_size,
    content_key,
    staging_key,
)
from blobledger.blob_worker.upload_job import UploadJob
from blobledger.infra.retry import CircuitBreaker
from blobledger.infra.s3 import S3ChecksumMismatch
from blobledger.schemas.errors import PermanentError
from blobledger.schemas.ports import BlobStore

__all__ = [
    "SHA256_HEX",
    "STAGING_PREFIX",
    "Progress",
    "Promoter",
    "ServerSideCopy",
    "Transfer",
    "TransferCancelled",
    "TransferOptions",
    "TransferResult",
    "UploadSpec",
    "content_key",
    "staging_key",
]


class Transfer:
    """Uploads sources to S3. One per process: it owns the part thread pool; ``run`` may be
    called from several threads (each upload gets its own in-flight budget)."""

    def __init__(
        self,
        s3: BlobStore,
        options: TransferOptions,
        *,
        breaker: CircuitBreaker | None = None,
        hash_cache: HashCache | None = None,
        promoter: Promoter | None = None,
        http: GuardedHttp | None = None,
    ) -> None:
        self.s3 = s3
        self.opts = options
        self.breaker = breaker or CircuitBreaker("s3")
        self.cache = hash_cache
        self.http = http if http is not None else GuardedHttp(options.sources)
        self.calls = S3Calls(
            s3, options.bucket, attempts=options.retry_attempts, breaker=self.breaker
        )
        self.promoter: Promoter = promoter or ServerSideCopy(
            self.calls, max_blob_size=options.max_blob_size
        )
        self._pool = DaemonPool(options.max_in_flight, thread_name_prefix="s3-part")

    def close(self) -> None:
        """Release the part threads and connections. A part still stuck in an S3 call is
        left behind (a daemon thread): its multipart upload stays open for a resume."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    # --- S3 calls: translated, retried (transient only), through the breaker -------------
    def call(
        self,
        op: str,
        *,
        cancel: threading.Event | None = None,
        body: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        return self.calls.call(op, cancel=cancel, body=body, **kwargs)

    def head(self, key: str) -> Mapping[str, Any] | None:
        return self.calls.head(key)

    def abort(self, key: str, multipart_id: str) -> None:
        """Abort a multipart upload; one already gone is fine."""
        self.calls.abort(key, multipart_id)

    # --- entry point -------------------------------------------------------------------
    def run(
        self,
        spec: UploadSpec,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[Progress], None] | None = None,
        final_attempt: bool = True,
    ) -> TransferResult:
        """Upload ``spec.source``; return where it is stored.

        Raises UploadFailure (compensate; nothing is left open), TransferCancelled (the
        multipart upload stays open for a resume), or TransientError (retry later; the
        multipart upload stays open for the retry to resume, unless ``final_attempt``).
        Whatever fails once ``cancel`` is set is TransferCancelled: a source cut off by the
        cancel (:mod:`.cancel`) is not a broken source, and nothing is cleaned up."""
        job = UploadJob(
            spec,
            self.opts,
            calls=self.calls,
            pool=self._pool,
            cancel=cancel or threading.Event(),
            meter=Meter(spec.upload_id, progress),
            promoter=self.promoter,
            cache=self.cache,
        )
        try:
            result = self._upload(job)
        except BaseException as e:
            if isinstance(e, TransferCancelled) or job.cancel.is_set():
                left = job.open_multipart_upload
                raise TransferCancelled(
                    left.key if left else None, left.upload_id if left else None
                ) from e
            if isinstance(e, PermanentError):
                job.fail()
                if isinstance(e, S3ChecksumMismatch):
                    raise UploadFailure(
                        "checksum_mismatch", f"{e}; did the source change while uploading?"
                    ) from e
            elif final_attempt:
                job.fail()
            raise
        job.meter.final("stored", done=result.size)
        return result

    def _upload(self, job: UploadJob) -> TransferResult:
        spec, opts = job.spec, self.opts
        spec.validate(opts.max_blob_size)
        # no dedup before the source is read: a declared hash proves nothing
        src = open_source(
            spec.source,
            policy=opts.sources,
            upload_id=spec.upload_id,
            http=self.http,
            timeout=opts.http_timeout,
        )
        # a cancel wakes a read blocked on the source's socket (a local file read returns)
        unhook = on_cancel(job.cancel, src.interrupt) if isinstance(src, HttpSource) else None
        try:
            if src.size is not None:
                check_declared_size(spec.declared_size, src.size, what=src.uri)
            # plan_parts refuses a known size over the limit (size_limit)
            plan = plan_parts(
                src.size if src.size is not None else spec.declared_size,
                min_part_size=opts.min_part_size,
                max_blob_size=opts.max_blob_size,
            )
            return choose_strategy(job, src, plan).run()
        finally:
            if unhook is not None:
                unhook()
            src.close()
