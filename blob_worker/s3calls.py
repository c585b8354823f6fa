"""S3 calls as the transfer makes them: driver errors translated to project errors,
transient ones retried (tenacity), every try through the circuit breaker and, when a
cancel event is given, refused once it is set (so a cancelled upload stops between
tries instead of finishing its retries)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from blobledger.blob_worker.transfer_types import TransferCancelled
from blobledger.infra import metrics
from blobledger.infra.retry import CircuitBreaker, retrying
from blobledger.infra.s3 import S3NotFound, head, translate
from blobledger.schemas.ports import BlobStore

log = structlog.get_logger(__name__)

#: the calls that send a blob's bytes (their retries are what the part-retry metric counts)
PART_WRITES = frozenset({"upload_part", "put_object"})


class S3Calls:
    """The injected S3 client behind retries and the breaker. Thread-safe: part uploads
    call it from the pool."""

    def __init__(
        self, client: BlobStore, bucket: str, *, attempts: int, breaker: CircuitBreaker
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.attempts = attempts
        self.breaker = breaker

    def call(
        self,
        op: str,
        *,
        cancel: threading.Event | None = None,
        body: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``client.<op>(**kwargs)``; ``body`` builds a fresh request body per try (a
        retried part re-reads its bytes from the start)."""
        fn = getattr(self.client, op)

        def on_retry(e: BaseException, attempt: int) -> None:
            log.warning("s3.retry", op=op, attempt=attempt, error=str(e))
            if op in PART_WRITES:
                metrics.record_part_retry()

        for attempt in retrying(self.attempts, on_retry=on_retry):
            with attempt:
                if cancel is not None and cancel.is_set():
                    raise TransferCancelled()
                with self.breaker.guard():
                    try:
                        return fn(**kwargs, **({"Body": body()} if body else {}))
                    except Exception as e:
                        raise translate(e) from e
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def head(self, key: str) -> Mapping[str, Any] | None:
        """The object's metadata, or None when it does not exist."""
        for attempt in retrying(self.attempts):
            with attempt, self.breaker.guard():
                return head(self.client, self.bucket, key)
        raise AssertionError("unreachable")

    def abort(self, key: str, multipart_id: str) -> None:
        """Abort a multipart upload; one already gone is fine."""
        try:
            self.call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=multipart_id)
            log.info("s3.multipart_aborted", key=key, multipart_id=multipart_id)
        except S3NotFound:
            pass
