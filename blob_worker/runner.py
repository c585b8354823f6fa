"""``blobledger worker``: upload commands in, completion/compensation events out.

Order per command (consume-transform-produce, at-least-once, idempotent):

1. poll an ``UploadRequested`` (several workers share the partitions in one group);
2. run the transfer on a background thread; once it has run for
   ``UNPOLLED_TRANSFER_SECONDS`` this thread pauses the consumer and keeps polling it, so
   a long upload neither holds rebalances up for long nor exceeds
   ``max.poll.interval.ms``; a revoked partition or shutdown cancels the transfer and
   leaves its multipart upload open for whoever gets the command next (resume);
3. produce the outcome (deterministic event id) and wait for the broker's ack;
4. only then commit the command's offset.

A crash between any two steps redelivers the command; the transfer resumes or dedups,
the outcome gets the same event id, and the fold applies it once. Transient failures are
retried (tenacity per S3 call, then ``TRANSFER_ATTEMPTS`` resumable attempts with backoff);
a spent budget or a passed deadline becomes a compensation.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from blobledger.blob_worker import spool
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.netguard import redact_url
from blobledger.blob_worker.outcomes import failed_event, stored_event
from blobledger.blob_worker.transfer import (
    Progress,
    Transfer,
    TransferCancelled,
    TransferResult,
    UploadSpec,
    staging_key,
)
from blobledger.infra import logging as blog
from blobledger.infra.dlq import DeadLetters
from blobledger.infra.kafka import position_of
from blobledger.infra.publisher import Publisher
from blobledger.infra.settings import Settings
from blobledger.schemas.auth import Keyring
from blobledger.schemas.codec import Codec, default_codec
from blobledger.schemas.errors import (
    BlobledgerError,
    CodecError,
    TransientError,
    UnauthenticatedError,
)
from blobledger.schemas.events import Event, UploadRequested, now_us
from blobledger.schemas.ports import LogConsumer

log = structlog.get_logger(__name__)

#: resumable attempts of one command before it is compensated (each attempt already
#: retries every S3 call ``s3_retry_attempts`` times with jittered backoff)
TRANSFER_ATTEMPTS = 4
MAX_BACKOFF_SECONDS = 30.0
#: how long a transfer runs before the consumer is paused and polled meanwhile. Pausing
#: is not free: a resumed partition delivers again only after ~0.5-0.9 s (librdkafka
#: restarts its fetcher; measured on Tansu), which the command right behind a 1 GiB
#: upload would pay (P6: a dedup re-upload took 0.6-1 s instead of ~0.15 s). Until then
#: librdkafka's own thread keeps heartbeating; a rebalance waits for the next poll, so
#: this bounds how long one worker can hold a rebalance up.
UNPOLLED_TRANSFER_SECONDS = 20.0


@dataclass
class _Busy:
    """The command being transferred, so rebalance callbacks can cancel it."""

    topic: str
    partition: int
    cancel: threading.Event = field(default_factory=threading.Event)
    revoked: bool = False
    deadline_hit: bool = False


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        consumer: LogConsumer,
        publisher: Publisher,
        transfer: Transfer,
        keyring: Keyring,
        codec: Codec | None = None,
        clock_us: Callable[[], int] = now_us,
        transfer_attempts: int = TRANSFER_ATTEMPTS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        unpolled_seconds: float = UNPOLLED_TRANSFER_SECONDS,
    ) -> None:
        self.settings = settings
        self.unpolled_seconds = unpolled_seconds
        self.transfer_attempts = transfer_attempts
        self.max_backoff = max_backoff
        self.consumer = consumer
        self.publisher = publisher
        self.transfer = transfer
        #: commands are untrusted input: only an authenticated requester's are executed
        self.keyring = keyring
        self.codec = codec or default_codec()
        self.clock_us = clock_us
        self.dead_letters = DeadLetters(publisher.producer, settings.dlq_topic)
        self._stop = threading.Event()
        self._busy: _Busy | None = None
        self._paused = False
        self.handled = 0
        #: set once the group has given this worker partitions (tests, health checks)
        self.assigned = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        busy = self._busy
        if busy is not None:
            busy.cancel.set()

    def close(self) -> None:
        try:
            self.consumer.close()  # leave the group now: our partitions move at once
        finally:
            self.publisher.close()
            self.transfer.close()

    def run(self, *, max_commands: int | None = None, idle_exit: float | None = None) -> int:
        """Process commands until stopped (or ``max_commands`` / ``idle_exit`` seconds idle)."""
        self.consumer.subscribe(
            [self.settings.commands_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "worker.started", topic=self.settings.commands_topic, group=self.settings.worker_group
        )
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if max_commands is not None and self.handled >= max_commands:
                break
            msg = self.consumer.poll(0.5)
            if msg is None:
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("worker.consume_error", error=err.str())
                continue
            self.process(msg)
            idle_since = time.monotonic()
        log.info("worker.stopped", handled=self.handled)
        return self.handled

    # --- rebalance ---------------------------------------------------------------------
    def _on_assign(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        log.info("worker.assigned", partitions=[p.partition for p in partitions])
        if partitions and self._busy is None and not self._paused:
            # librdkafka keeps a partition's pause flag across a lost-and-reassigned cycle
            # (librdkafka#1849): a partition paused by an earlier command must not stay mute
            try:
                consumer.resume(partitions)
            except KafkaException as e:
                log.warning("worker.resume_failed", error=str(e))
        if partitions:
            self.assigned.set()

    def _on_lost(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        """The broker was unreachable past the session timeout. The running transfer only
        needs S3, so let it finish: its outcome has a deterministic event id, so even if
        another worker redoes the command meanwhile, the fold applies it once."""
        log.warning("worker.partitions_lost", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        log.info("worker.revoked", partitions=[p.partition for p in partitions])
        busy = self._busy
        if busy and any(
            p.topic == busy.topic and p.partition == busy.partition for p in partitions
        ):
            busy.revoked = True
            busy.cancel.set()

    def _pause(self) -> None:
        """Pause every assigned partition, once per command. Lazily: a resume costs
        ~0.5 s before Tansu delivers again, which a dedup hit (tens of ms) need not pay."""
        if not self._paused:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True

    def _poll_while_busy(self) -> None:
        """Serve the group protocol while a transfer runs. The consumer is paused, but a
        partition assigned meanwhile may still deliver: put such a message back."""
        self._pause()
        msg = self.consumer.poll(0)
        if msg is not None and not msg.error():
            pos = position_of(msg)
            tp = TopicPartition(pos.topic, pos.partition, pos.offset)
            try:
                self.consumer.pause([tp])
                self.consumer.seek(tp)
            except KafkaException as e:
                log.warning("worker.seek_back_failed", partition=pos.partition, error=str(e))

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self._poll_while_busy()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    # --- one command -------------------------------------------------------------------
    def process(self, msg: Message) -> None:
        value = msg.value() or b""
        self.keyring.refresh()
        try:
            cmd = self.codec.decode(value)
            if not isinstance(cmd, UploadRequested):
                raise CodecError(f"{type(cmd).__name__} is not an upload command")
            why = self.keyring.verify_event(value, msg.headers(), cmd)
            if why is not None:
                raise UnauthenticatedError(
                    f"upload command of {cmd.envelope.actor!r} not executed: {why}"
                )
        except (CodecError, UnauthenticatedError) as e:
            log.error(
                "worker.undecodable_command",
                partition=msg.partition(),
                offset=msg.offset(),
                error=str(e),
            )
            self.dead_letters.send(msg, e)
            self.dead_letters.flush()
            self._commit(msg)
            return
        with blog.bound_to(cmd, upload_id=cmd.upload_id):
            try:
                event = self.execute(msg, cmd)
                if event is None:  # cancelled: the command goes to whoever owns it next
                    self._rewind(msg)
                    return
                self._emit(event)
                self._commit(msg)
                self._drop_spool_entry(cmd.upload_id)
                self.handled += 1
            finally:
                if self._paused:
                    self._paused = False
                    try:
                        self.consumer.resume(self.consumer.assignment())
                    except KafkaException as e:
                        log.warning("worker.resume_failed", error=str(e))

    def execute(self, msg: Message, cmd: UploadRequested) -> Event | None:
        """Run the transfer with its retry budget; the outcome event, or None if cancelled."""
        if cmd.deadline and self.clock_us() >= cmd.deadline:
            log.warning("upload.deadline_passed_before_start")
            self._abort_staging(cmd.upload_id)
            return failed_event(
                cmd.envelope,
                cmd.upload_id,
                "timeout",
                "the deadline passed before a worker picked the upload up",
            )
        spec = UploadSpec.from_command(cmd)
        log.info("upload.started", source=redact_url(cmd.source), declared_size=cmd.declared_size)
        attempts = self.transfer_attempts
        pos = position_of(msg)
        for attempt in range(1, attempts + 1):
            final = attempt == attempts
            busy = _Busy(pos.topic, pos.partition)
            outcome = self._transfer(spec, busy, cmd.deadline, final)
            if isinstance(outcome, TransferResult):
                log.info(
                    "upload.completed",
                    sha256=outcome.sha256,
                    size=outcome.size,
                    dedup=outcome.dedup,
                    bytes_sent=outcome.bytes_sent,
                    duration_ms=outcome.duration_ms,
                )
                return stored_event(cmd.envelope, cmd.upload_id, outcome)
            if isinstance(outcome, UploadFailure):
                log.warning("upload.failed", reason=outcome.reason, detail=outcome.detail)
                return failed_event(cmd.envelope, cmd.upload_id, outcome.reason, outcome.detail)
            if isinstance(outcome, TransferCancelled):
                if busy.deadline_hit:
                    self._abort(outcome)
                    log.warning("upload.timed_out")
                    return failed_event(
                        cmd.envelope,
                        cmd.upload_id,
                        "timeout",
                        "the upload did not finish before its deadline",
                    )
                log.info("upload.cancelled", revoked=busy.revoked, stopping=self._stop.is_set())
                return None
            log.warning(
                "upload.attempt_failed",
                attempt=attempt,
                of=attempts,
                error=str(outcome),
                error_type=type(outcome).__name__,
            )
            if final:
                return failed_event(
                    cmd.envelope,
                    cmd.upload_id,
                    "retry_budget_exhausted",
                    f"{attempts} attempts failed; last: {outcome}",
                )
            self._sleep(random.uniform(0, min(self.max_backoff, 2.0**attempt)))
            if self._stop.is_set():
                return None
        raise AssertionError("unreachable")

    def _transfer(self, spec: UploadSpec, busy: _Busy, deadline_us: int, final: bool) -> Any:
        """Run one attempt on a thread; keep the consumer alive; enforce the deadline."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = self.transfer.run(
                    spec, cancel=busy.cancel, progress=self._progress, final_attempt=final
                )
            except BaseException as e:
                box["out"] = e

        ctx = contextvars.copy_context()
        thread = threading.Thread(
            target=ctx.run, args=(target,), name=f"upload-{spec.upload_id[:8]}", daemon=True
        )
        self._busy = busy
        thread.start()
        try:
            # most transfers (dedup, anything up to a few GiB) finish before the consumer
            # needs serving; only a longer one pauses the consumer and keeps polling it
            serve_from = time.monotonic() + self.unpolled_seconds
            while thread.is_alive():
                if time.monotonic() >= serve_from:
                    self._poll_while_busy()
                thread.join(0.2)
                if deadline_us and self.clock_us() >= deadline_us and not busy.cancel.is_set():
                    busy.deadline_hit = True
                    busy.cancel.set()
                if self._stop.is_set():
                    busy.cancel.set()
        finally:
            self._busy = None
        return box["out"]

    def _drop_spool_entry(self, upload_id: str) -> None:
        """The upload is terminal and its outcome committed: the file its client spooled
        for it is needed no more (a crash before this leaves it to the reaper)."""
        spool_dir = self.settings.spool_dir
        if spool_dir is not None and spool.remove(spool_dir, upload_id):
            log.info("spool.removed")

    def _abort(self, cancelled: TransferCancelled) -> None:
        if cancelled.key and cancelled.multipart_id:
            try:
                self.transfer.abort(cancelled.key, cancelled.multipart_id)
            except BlobledgerError as e:
                log.warning("upload.abort_failed", error=str(e))  # the reaper retries

    def _abort_staging(self, upload_id: str) -> None:
        """Abort leftovers of an earlier attempt under this upload's staging key."""
        key = staging_key(upload_id)
        try:
            found = self.transfer.call(
                "list_multipart_uploads", Bucket=self.settings.s3_bucket, Prefix=key
            ).get("Uploads", [])
            for u in found:
                if u["Key"] == key:
                    self.transfer.abort(key, u["UploadId"])
        except BlobledgerError as e:
            log.warning("upload.abort_failed", error=str(e))

    # --- outcome and offset ------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        """Publish and wait for the ack; keep trying while the broker is away (the offset
        is not committed until this returns, so nothing is lost if we are killed)."""
        delay = 0.5
        while True:
            try:
                receipt = self.publisher.publish(self.settings.events_topic, event)
                log.info(
                    "outcome.published",
                    outcome=event.event_type,
                    partition=receipt.partition,
                    offset=receipt.offset,
                )
                self._progress_state(event)
                return
            except TransientError as e:
                log.warning("outcome.publish_retry", error=str(e))
                if self._stop.is_set():
                    raise
                self._sleep(random.uniform(0, delay))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _commit(self, msg: Message) -> None:
        pos = position_of(msg)
        tp = TopicPartition(pos.topic, pos.partition, pos.offset + 1)
        try:
            self.consumer.commit(offsets=[tp], asynchronous=False)
        except KafkaException as e:
            # e.g. the partition moved: the next owner redoes the command idempotently
            log.warning(
                "worker.commit_failed", partition=pos.partition, offset=pos.offset, error=str(e)
            )

    def _rewind(self, msg: Message) -> None:
        pos = position_of(msg)
        # no longer ours (KafkaException): the new owner starts from the committed offset
        with contextlib.suppress(KafkaException):
            self.consumer.seek(TopicPartition(pos.topic, pos.partition, pos.offset))

    # --- progress ----------------------------------------------------------------------
    def _progress(self, p: Progress) -> None:
        self._send_progress(
            p.upload_id,
            {
                "upload_id": p.upload_id,
                "bytes_done": p.bytes_done,
                "total": p.total,
                "mbps": p.mbps,
                "state": p.state,
            },
        )

    def _progress_state(self, event: Event) -> None:
        upload_id = getattr(event, "upload_id", "")
        state = "stored" if event.event_type == "BlobStored" else "compensated"
        body: dict[str, Any] = {"upload_id": upload_id, "state": state}
        if state == "compensated":
            body["reason"] = getattr(event, "reason", "")
        else:
            body.update(bytes_done=getattr(event, "size", 0), total=getattr(event, "size", 0))
        self._send_progress(upload_id, body)

    def _send_progress(self, upload_id: str, body: dict[str, Any]) -> None:
        try:
            self.publisher.producer.produce(
                self.settings.progress_topic,
                key=upload_id.encode(),
                value=json.dumps(body).encode(),
            )
        except (BufferError, KafkaException) as e:
            log.debug("progress.dropped", error=str(e))  # progress is best effort


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobledger worker", description="Consume upload commands and stream blobs to S3."
    )
    parser.add_argument(
        "--max-commands", type=int, default=None, help="exit after this many commands"
    )
    parser.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many idle seconds"
    )
    parser.add_argument(
        "--local-files",
        choices=("hash_first", "stream"),
        default="hash_first",
        help="hash_first: hash, then upload to the content key (stored content "
        "costs 0 bytes); stream: hash while uploading to staging, then promote",
    )
    args = parser.parse_args(argv)
    blog.configure()
    settings = Settings.from_env()
    if settings.blob_niceness:
        # bulk transfer yields the CPU to latency-sensitive metadata work on the same host
        os.nice(settings.blob_niceness)
    from blobledger.infra import bootstrap

    worker = bootstrap.worker(settings, local_files=args.local_files)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker.signal", signal=signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run(max_commands=args.max_commands, idle_exit=args.idle_exit)
    finally:
        worker.close()
    return 0
