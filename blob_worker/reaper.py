"""``blobledger reaper``: compensate pending uploads whose deadline passed, and remove what
crashed uploads left in S3.

* Pending uploads past their deadline (read model ``uploads``) get a ``BlobUploadFailed``
  with reason ``timeout`` and the upload's deterministic compensation id, so the reaper
  racing a worker (or another reaper) emits one event the fold applies once; a worker
  that finishes later emits a completion the fold turns into an orphan (GC candidate).
* Multipart uploads initiated longer ago than the upload deadline (plus a grace period)
  belong to commands that are over by now: they are aborted. Completed staging objects
  that old are deleted. Both are safe because no live command can still use them.
* Spool entries (files clients linked or copied for the worker) of the uploads it
  compensates are removed, and so is any entry older than the deadline plus the grace
  period: whatever uploaded or failed it is over.

Each pass is one trace (its compensations' folds join it) and reports what it did and
how many uploads are pending, and for how long, to the metrics (infra/metrics.py).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import structlog
from psycopg import sql

from blobledger.blob_worker import spool
from blobledger.blob_worker.outcomes import REAPER_ACTOR, failed_event
from blobledger.blob_worker.transfer import STAGING_PREFIX
from blobledger.infra import logging as blog
from blobledger.infra import metrics, tracing
from blobledger.infra.postgres import translated
from blobledger.infra.s3 import translate
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError
from blobledger.schemas.events import Envelope
from blobledger.schemas.ports import BlobStore, EventPublisher

log = structlog.get_logger(__name__)

#: extra age before an open multipart upload counts as abandoned, beyond the deadline
GRACE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class ExpiredUpload:
    upload_id: str
    object_id: str
    tenant: str
    deadline: datetime


@dataclass(frozen=True, slots=True)
class ReapReport:
    compensated: int
    aborted_multipart: int
    deleted_staging: int
    deleted_spool: int = 0


def expired_uploads(
    conn: psycopg.Connection, schema: str, *, now: datetime | None = None, limit: int = 1000
) -> list[ExpiredUpload]:
    """Pending uploads whose deadline is before ``now`` (oldest first)."""
    query = sql.SQL(
        "SELECT u.upload_id, u.object_id, o.tenant, u.deadline FROM {s}.uploads u "
        "JOIN {s}.objects o ON o.object_id = u.object_id "
        "WHERE u.state = 'pending' AND u.deadline < %s ORDER BY u.deadline LIMIT %s"
    ).format(s=sql.Identifier(schema))
    with translated():
        rows = conn.execute(query, (now or datetime.now(UTC), limit)).fetchall()
    return [ExpiredUpload(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]


def pending_uploads(conn: psycopg.Connection, schema: str) -> tuple[int, float]:
    """How many uploads are pending and the age in seconds of the oldest (0 when none),
    by the database's clock."""
    query = sql.SQL(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(requested_at)), 0) "
        "FROM {s}.uploads WHERE state = 'pending'"
    ).format(s=sql.Identifier(schema))
    with translated():
        row = conn.execute(query).fetchone()
    return (0, 0.0) if row is None else (int(row[0]), float(row[1]))


def compensation_for(upload: ExpiredUpload):  # type: ignore[no-untyped-def]
    """The timeout compensation for an expired upload (id shared with the worker's)."""
    env = Envelope(
        object_id=upload.object_id,
        actor=REAPER_ACTOR,
        tenant=upload.tenant,
        correlation_id=upload.upload_id,
    )
    return failed_event(
        env,
        upload.upload_id,
        "timeout",
        f"deadline {upload.deadline.isoformat()} passed while the upload was pending",
        actor=REAPER_ACTOR,
    )


class Reaper:
    """Compensates expired uploads and cleans S3. It opens a read-model connection per
    pass (``connect``), so a pass after a Postgres outage simply works again."""

    def __init__(
        self,
        settings: Settings,
        *,
        connect: Callable[[], psycopg.Connection],
        s3: BlobStore,
        publisher: EventPublisher,
    ) -> None:
        self.settings, self._connect, self.s3, self.publisher = settings, connect, s3, publisher

    def close(self) -> None:
        self.publisher.close()

    def compensate_expired(self) -> int:
        schema = self.settings.read_model_schema
        with self._connect() as conn:
            count, oldest = pending_uploads(conn, schema)
            expired = expired_uploads(conn, schema)
        metrics.record_pending_uploads(count, oldest, self.settings.upload_deadline_seconds)
        futures = [
            self.publisher.publish_async(self.settings.events_topic, compensation_for(u))
            for u in expired
        ]
        for u, f in zip(expired, futures, strict=True):
            f.result(self.settings.wait_timeout_seconds)
            log.info(
                "reaper.compensated",
                upload_id=u.upload_id,
                object_id=u.object_id,
                deadline=u.deadline.isoformat(),
            )
            spool_dir = self.settings.spool_dir
            if spool_dir is not None:
                spool.remove(spool_dir, u.upload_id)
        return len(expired)

    def clean_s3(self, *, older_than: float | None = None) -> tuple[int, int]:
        """Abort multipart uploads and delete staging objects older than ``older_than``
        seconds (default: the upload deadline plus a grace period)."""
        age = (
            older_than
            if older_than is not None
            else self.settings.upload_deadline_seconds + GRACE_SECONDS
        )
        cutoff = datetime.now(UTC) - timedelta(seconds=age)
        bucket = self.settings.s3_bucket
        aborted = deleted = 0
        try:
            for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
                for u in page.get("Uploads", []):
                    if u["Initiated"] < cutoff:
                        self.s3.abort_multipart_upload(
                            Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]
                        )
                        log.info(
                            "reaper.multipart_aborted",
                            key=u["Key"],
                            initiated=u["Initiated"].isoformat(),
                        )
                        aborted += 1
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=STAGING_PREFIX
            ):
                for obj in page.get("Contents", []):
                    if obj["LastModified"] < cutoff:
                        self.s3.delete_object(Bucket=bucket, Key=obj["Key"])
                        log.info("reaper.staging_deleted", key=obj["Key"])
                        deleted += 1
        except Exception as e:
            raise translate(e) from e
        return aborted, deleted

    def clean_spool(self, *, older_than: float | None = None) -> int:
        """Remove spool entries older than ``older_than`` seconds (default: the upload
        deadline plus the grace period, when every upload that used one is over)."""
        spool_dir = self.settings.spool_dir
        if spool_dir is None:
            return 0
        age = (
            older_than
            if older_than is not None
            else self.settings.upload_deadline_seconds + GRACE_SECONDS
        )
        return spool.sweep(spool_dir, older_than=age)

    def run_once(self, *, multipart_older_than: float | None = None) -> ReapReport:
        with tracing.event_span("blobledger.reap"):
            compensated = self.compensate_expired()
            aborted, deleted = self.clean_s3(older_than=multipart_older_than)
            report = ReapReport(compensated, aborted, deleted, self.clean_spool())
        metrics.record_reaper_actions(**asdict(report))
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blobledger reaper", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between passes")
    parser.add_argument(
        "--multipart-older-than",
        type=float,
        default=None,
        help="abort multipart uploads older than this many seconds "
        "(default: upload deadline + 5 min)",
    )
    args = parser.parse_args(argv)
    blog.configure(service="reaper")
    from blobledger.infra import bootstrap

    settings = Settings.from_env()
    if not args.once:  # a single pass is over before anyone could scrape it
        bootstrap.observe(settings, "reaper")
    # SIGTERM (``blobledger down``, a supervisor) ends the wait or the sleep between passes:
    # a pass is short and idempotent, so stopping between passes loses nothing
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("reaper.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # a single pass fails at once without the broker; a service waits for it
    reaper = bootstrap.reaper(settings, wait=not args.once, stop=stop)
    try:
        while not stop.is_set():
            try:
                report = reaper.run_once(multipart_older_than=args.multipart_older_than)
                log.info(
                    "reaper.pass",
                    compensated=report.compensated,
                    aborted_multipart=report.aborted_multipart,
                    deleted_staging=report.deleted_staging,
                    deleted_spool=report.deleted_spool,
                )
            except BlobledgerError as e:
                metrics.record_reaper_actions(pass_failed=1)
                if args.once:
                    raise
                log.warning("reaper.pass_failed", error=str(e))  # S3 or Postgres away: next pass
            if args.once:
                return 0
            stop.wait(args.interval)
        return 0
    finally:
        reaper.close()
