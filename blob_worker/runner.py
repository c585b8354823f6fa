"""``blobledger worker``: upload commands in, completion/compensation events out.

Order per command (consume-transform-produce, at-least-once, idempotent):

1. poll an ``UploadRequested`` (several workers share the partitions in one group);
2. run its transfer on a thread of its own. Up to ``worker_concurrency`` commands are
   taken at once, and one at a time per object (:mod:`.lanes`: a later command for a busy
   object waits behind it), so a slow source holds one slot, never the worker. With
   every slot taken the consumer is paused, and still polled, so the group protocol is
   served throughout;
3. on that thread, produce the outcome (deterministic event id) and wait for the ack;
4. only then, on the polling thread, commit: per partition the offset of the lowest
   command not yet done (:mod:`.inflight`), never past an unfinished one.

A crash between any two steps redelivers the command; the transfer resumes or dedups,
the outcome gets the same event id, and the fold applies it once. Transient failures are
retried (tenacity per S3 call, then ``TRANSFER_ATTEMPTS`` resumable attempts with backoff);
a spent budget or a passed deadline becomes a compensation.

A revoked partition or shutdown cancels its transfers (:mod:`.cancel` also wakes a read
blocked on a source's socket) and leaves their multipart uploads open for whoever gets
the commands next (resume). On shutdown the transfers get ``STOP_GRACE_SECONDS`` to wind
down; one still stuck (in an S3 call, say) is left behind uncommitted on its daemon
thread, so SIGTERM ends the worker within seconds and the next owner resumes the upload.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from blobledger.blob_worker import spool
from blobledger.blob_worker.cancel import Cancel
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.inflight import Watermarks
from blobledger.blob_worker.lanes import Lanes
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
from blobledger.infra import metrics, tracing
from blobledger.infra.dlq import DeadLetters
from blobledger.infra.kafka import LogPosition, position_of
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
from blobledger.schemas.events import (
    BlobStored,
    BlobUploadFailed,
    Event,
    UploadRequested,
    now_us,
)
from blobledger.schemas.ports import LogConsumer

log = structlog.get_logger(__name__)

#: resumable attempts of one command before it is compensated (each attempt already
#: retries every S3 call ``s3_retry_attempts`` times with jittered backoff)
TRANSFER_ATTEMPTS = 4
MAX_BACKOFF_SECONDS = 30.0
#: how long a stopping worker waits for its cancelled transfers before it leaves the
#: rest behind (uncommitted, multipart uploads open): SIGTERM must end it in seconds
STOP_GRACE_SECONDS = 2.0
#: poll timeouts: while commands run, the loop comes round often to commit what finished
IDLE_POLL_SECONDS = 0.5
BUSY_POLL_SECONDS = 0.05

_Partition = tuple[str, int]


@dataclass(eq=False)
class _Slot:
    """One command taken from the log: waiting behind its object, or running on its own
    thread. The polling thread owns the flags; the command's thread sets the result."""

    position: LogPosition
    command: UploadRequested
    #: the trace the command carries (its record's headers): the transfer continues it
    trace: Context | None = None
    cancel: Cancel = field(default_factory=Cancel)
    #: the deadline passed (set before ``cancel``): the cancel becomes a compensation
    deadline_hit: bool = False
    #: the partition was revoked or lost: the slot no longer counts for its commit point
    detached: bool = False
    #: the result: the outcome was acknowledged, or what escaped the command's thread
    acked: bool = False
    error: BaseException | None = None

    @property
    def partition(self) -> _Partition:
        return (self.position.topic, self.position.partition)


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
        concurrency: int | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``dead_letters``: with an index of what the DLQ holds (``bootstrap.worker``), so a
        restarted worker does not dead-letter a command twice; default: over the
        publisher's producer, remembering only its own letters."""
        self.settings = settings
        self.transfer_attempts = transfer_attempts
        self.max_backoff = max_backoff
        #: commands taken at once (running, or waiting behind their object)
        self.concurrency = max(1, concurrency or settings.worker_concurrency)
        self.stop_grace = stop_grace
        self.consumer = consumer
        self.publisher = publisher
        self.transfer = transfer
        #: commands are untrusted input: only an authenticated requester's are executed
        self.keyring = keyring
        self.codec = codec or default_codec()
        self.clock_us = clock_us
        self.dead_letters = dead_letters or DeadLetters(publisher.producer, settings.dlq_topic)
        self._stop = threading.Event()
        self._running: set[_Slot] = set()
        self._lanes: Lanes[str, _Slot] = Lanes()
        #: per partition, the offsets taken; items: the upload id whose spool entry goes
        #: once its offset is committed (None for a dead-lettered command)
        self._marks: Watermarks[_Partition, str | None] = Watermarks()
        self._finished: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._max_commands: int | None = None
        self._paused = False
        #: commands whose outcome was acknowledged
        self.handled = 0
        #: set once the group has given this worker partitions (tests, health checks)
        self.assigned = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking commands and cancel the running ones (safe from any thread and
        from a signal handler)."""
        self._stop.set()
        for slot in list(self._running):
            slot.cancel.set()

    def close(self) -> None:
        try:
            self.consumer.close()  # leave the group now: our partitions move at once
        finally:
            try:
                self.publisher.close()
            finally:
                try:
                    self.dead_letters.close()
                finally:
                    self.transfer.close()

    def run(self, *, max_commands: int | None = None, idle_exit: float | None = None) -> int:
        """Process commands until stopped (or ``max_commands`` handled, or ``idle_exit``
        seconds with nothing to do)."""
        self._max_commands = max_commands
        self.consumer.subscribe(
            [self.settings.commands_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "worker.started",
            topic=self.settings.commands_topic,
            group=self.settings.worker_group,
            concurrency=self.concurrency,
        )
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                self._collect()
                if max_commands is not None and self.handled >= max_commands:
                    break
                self._watch_deadlines()
                if self._paused and self._has_room():
                    self._set_paused(False)
                msg = self.consumer.poll(BUSY_POLL_SECONDS if self._taken else IDLE_POLL_SECONDS)
                if self._taken:  # idle means nothing to do, not nothing new
                    idle_since = time.monotonic()
                if msg is None:
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        break
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("worker.consume_error", error=err.str())
                    continue
                self._take(msg)
                idle_since = time.monotonic()
        finally:
            self._wind_down()
        log.info("worker.stopped", handled=self.handled)
        return self.handled

    @property
    def _taken(self) -> int:
        """Commands taken and not over: running (detached ones too: they hold threads
        and their object's lane) or waiting behind their object."""
        return len(self._running) + self._lanes.waiting

    def _has_room(self) -> bool:
        if self._taken >= self.concurrency:
            return False
        budget = self._max_commands
        return budget is None or self.handled + self._taken < budget

    def _wind_down(self) -> None:
        """Cancel what runs, wait up to ``stop_grace`` for it, commit what finished; what
        is still stuck is left behind, uncommitted, for the partition's next owner."""
        self._stop.set()
        for slot in list(self._running):
            slot.cancel.set()
        self._lanes.discard(lambda _: True)  # never started: redelivered to the next owner
        end = time.monotonic() + self.stop_grace
        while self._running and time.monotonic() < end:
            self._collect(wait=min(0.1, max(0.0, end - time.monotonic())))
        if self._running:
            log.warning(
                "worker.transfers_left_behind",
                uploads=[s.command.upload_id for s in self._running],
                why="still stuck after the stop grace period; uncommitted, so the next "
                "owner redoes them (their multipart uploads stay open for a resume)",
            )

    # --- rebalance (served from poll, on this thread) ------------------------------------
    def _on_assign(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        log.info("worker.assigned", partitions=[p.partition for p in partitions])
        if not partitions:
            return
        # librdkafka keeps a partition's pause flag across a lost-and-reassigned cycle
        # (librdkafka#1849): set it to what the worker wants now, either way
        try:
            if self._paused:
                consumer.pause(partitions)
            else:
                consumer.resume(partitions)
        except KafkaException as e:
            log.warning("worker.pause_flag_failed", error=str(e))
        self.assigned.set()

    def _on_revoke(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        """Commit what is done, then cancel the partitions' transfers: their multipart
        uploads stay open for the partitions' next owner to resume."""
        log.info("worker.revoked", partitions=[p.partition for p in partitions])
        keys = {(p.topic, p.partition) for p in partitions}
        for key in keys:
            self._commit(key)
        self._detach(keys, cancel=True)

    def _on_lost(self, consumer: LogConsumer, partitions: list[TopicPartition]) -> None:
        """The broker was unreachable past the session timeout. Running transfers only
        need S3, so let them finish: their outcomes have deterministic event ids, so even
        if another worker redoes the commands meanwhile, the fold applies each once."""
        log.warning("worker.partitions_lost", partitions=[p.partition for p in partitions])
        self._detach({(p.topic, p.partition) for p in partitions}, cancel=False)

    def _detach(self, keys: set[_Partition], *, cancel: bool) -> None:
        """The partitions are no longer ours: forget their offsets and waiting commands
        (redelivered to the next owner); their running commands count for no commit."""
        for slot in list(self._running):
            if slot.partition in keys:
                slot.detached = True
                if cancel:
                    slot.cancel.set()
        self._lanes.discard(lambda s: s.partition in keys)
        for key in keys:
            self._marks.drop(key)

    def _set_paused(self, paused: bool) -> None:
        try:
            parts = self.consumer.assignment()
            if paused:
                self.consumer.pause(parts)
            else:
                self.consumer.resume(parts)
            self._paused = paused
        except KafkaException as e:
            log.warning("worker.pause_flag_failed", paused=paused, error=str(e))

    def _put_back(self, pos: LogPosition) -> None:
        """Every slot is taken: pause (lazily: a resumed partition delivers again only
        after ~0.5 s on Tansu, which need not be paid while commands trickle in) and seek
        back so this command is read again once a slot is free."""
        tp = TopicPartition(pos.topic, pos.partition, pos.offset)
        try:
            self.consumer.pause([tp])
            self.consumer.seek(tp)
        except KafkaException as e:
            log.warning("worker.seek_back_failed", partition=pos.partition, error=str(e))
        if not self._paused:
            self._set_paused(True)

    # --- taking a command --------------------------------------------------------------
    def _take(self, msg: Message) -> None:
        pos = position_of(msg)
        key = (pos.topic, pos.partition)
        if self._marks.seen(key, pos.offset):
            log.info("worker.redelivered_in_flight", partition=pos.partition, offset=pos.offset)
            return
        if not self._has_room():
            self._put_back(pos)
            return
        cmd = self._decode(msg)
        if cmd is None:  # dead-lettered: done as soon as the offsets below it are
            self._marks.take(key, pos.offset, None)
            self._marks.finish(key, pos.offset)
            self._commit(key)
            return
        slot = _Slot(pos, cmd, trace=tracing.context_from_headers(msg.headers()))
        self._marks.take(key, pos.offset, cmd.upload_id)
        if self._lanes.admit(cmd.object_id, slot):
            self._start(slot)
        else:
            log.info(
                "worker.waiting_for_object",
                object_id=cmd.object_id,
                upload_id=cmd.upload_id,
                offset=pos.offset,
            )

    def _decode(self, msg: Message) -> UploadRequested | None:
        """The authenticated upload command in ``msg``, or None once it is dead-lettered."""
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
            return None
        return cmd

    def _start(self, slot: _Slot) -> None:
        thread = threading.Thread(
            target=self._run_slot,
            args=(slot,),
            name=f"upload-{slot.command.upload_id[:8]}",
            daemon=True,  # one stuck in I/O must not keep a stopped worker alive
        )
        self._running.add(slot)
        thread.start()

    def _run_slot(self, slot: _Slot) -> None:
        """The command's thread: transfer, then publish the outcome and wait for its ack."""
        cmd = slot.command
        try:
            with (
                blog.bound_to(cmd, upload_id=cmd.upload_id),
                # the outcome is published inside it: its fold joins the command's trace
                tracing.event_span(
                    "blobledger.transfer",
                    cmd,
                    context=slot.trace,
                    kind=SpanKind.CONSUMER,
                    attributes=tracing.message_attributes(slot.position),
                ),
                metrics.transfer_in_flight(),
            ):
                event = self._execute(slot)
                if event is None:
                    metrics.record_upload("cancelled")
                else:
                    slot.acked = self._emit(event)
                    if slot.acked:
                        _record_outcome(event)
        except BaseException as e:
            slot.error = e
        finally:
            self._finished.put(slot)

    def _collect(self, wait: float = 0.0) -> None:
        """Settle the commands whose threads ended (waiting up to ``wait`` for one): count
        them, start what waited behind them, commit what is done."""
        touched: set[_Partition] = set()
        crashed: BaseException | None = None
        while True:
            try:
                slot = self._finished.get(timeout=wait) if wait else self._finished.get_nowait()
            except queue.Empty:
                break
            wait = 0.0
            self._running.discard(slot)
            following = self._lanes.release(slot.command.object_id)
            if slot.error is not None:
                log.error(
                    "worker.command_failed",
                    upload_id=slot.command.upload_id,
                    error=repr(slot.error),
                )
                crashed = crashed or slot.error
            elif slot.acked:
                self.handled += 1
                if not slot.detached:
                    self._marks.finish(slot.partition, slot.position.offset)
                    touched.add(slot.partition)
            if following is not None:
                if self._stop.is_set():
                    self._lanes.discard(lambda _: True)
                else:
                    self._start(following)
        for key in touched:
            self._commit(key)
        if crashed is not None and not self._stop.is_set():
            # what no outcome covers (a bug, a publish refused for good) stops the worker;
            # the command is uncommitted, so the next owner gets it
            raise crashed

    def _watch_deadlines(self) -> None:
        now = self.clock_us()
        for slot in self._running:
            deadline = slot.command.deadline
            if deadline and now >= deadline and not slot.cancel.is_set():
                slot.deadline_hit = True
                slot.cancel.set()

    # --- one command (on its own thread) -------------------------------------------------
    def _execute(self, slot: _Slot) -> Event | None:
        """Run the transfer with its retry budget; the outcome event, or None if cancelled."""
        cmd = slot.command
        if cmd.deadline and self.clock_us() >= cmd.deadline:
            log.warning("upload.deadline_passed_before_start")
            self._abort_staging(cmd.upload_id)
            return self._timed_out(cmd, "the deadline passed before a worker picked the upload up")
        spec = UploadSpec.from_command(cmd)
        log.info("upload.started", source=redact_url(cmd.source), declared_size=cmd.declared_size)
        attempts = self.transfer_attempts
        for attempt in range(1, attempts + 1):
            final = attempt == attempts
            outcome = self._attempt(spec, slot.cancel, final)
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
                if slot.deadline_hit:
                    self._abort(outcome)
                    return self._timed_out(cmd, "the upload did not finish before its deadline")
                log.info("upload.cancelled", detached=slot.detached, stopping=self._stop.is_set())
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
            if slot.cancel.wait(random.uniform(0, min(self.max_backoff, 2.0**attempt))):
                if slot.deadline_hit:
                    self._abort_staging(cmd.upload_id)
                    return self._timed_out(cmd, "the upload did not finish before its deadline")
                log.info("upload.cancelled", detached=slot.detached, stopping=self._stop.is_set())
                return None
        raise AssertionError("unreachable")

    def _attempt(self, spec: UploadSpec, cancel: Cancel, final: bool) -> TransferResult | Exception:
        if cancel.is_set():  # cancelled before it began: not even the source is opened
            return TransferCancelled()
        try:
            return self.transfer.run(
                spec, cancel=cancel, progress=self._progress, final_attempt=final
            )
        except Exception as e:
            return e

    @staticmethod
    def _timed_out(cmd: UploadRequested, detail: str) -> Event:
        log.warning("upload.timed_out", detail=detail)
        return failed_event(cmd.envelope, cmd.upload_id, "timeout", detail)

    def _drop_spool_entry(self, upload_id: str) -> None:
        """The upload is terminal and its outcome committed: the file its client spooled
        for it is needed no more (a crash before this leaves it to the reaper)."""
        spool_dir = self.settings.spool_dir
        if spool_dir is not None and spool.remove(spool_dir, upload_id):
            log.info("spool.removed", upload_id=upload_id)

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
    def _emit(self, event: Event) -> bool:
        """Publish and wait for the ack; keep trying while the broker is away (the offset
        is not committed until this returns True, so nothing is lost if we are killed).
        False: the worker stops first, and the command goes to the next owner."""
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
                return True
            except TransientError as e:
                log.warning("outcome.publish_retry", error=str(e))
                if self._stop.wait(random.uniform(0, delay)):
                    log.warning("outcome.unpublished", why="the worker is stopping")
                    return False
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _commit(self, key: _Partition) -> None:
        """Commit ``key`` up to its lowest unfinished command, if that moved."""
        advance = self._marks.advance(key)
        if advance is None:
            return
        tp = TopicPartition(key[0], key[1], advance.offset)
        try:
            self.consumer.commit(offsets=[tp], asynchronous=False)
        except KafkaException as e:
            # e.g. the partition moved: the next owner redoes the commands idempotently
            log.warning(
                "worker.commit_failed", partition=key[1], offset=advance.offset, error=str(e)
            )
            return
        for upload_id in advance.released:
            if upload_id is not None:
                self._drop_spool_entry(upload_id)

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
        """The outcome, once published, as the last report: the bar shows it at once
        (what ``put`` answers still comes from the read model)."""
        upload_id = getattr(event, "upload_id", "")
        state = "stored" if event.event_type == "BlobStored" else "compensated"
        body: dict[str, Any] = {"upload_id": upload_id, "state": state}
        if state == "compensated":
            body["reason"] = getattr(event, "reason", "")
        else:
            size = getattr(event, "size", 0)
            body.update(bytes_done=size, total=size, dedup=bool(getattr(event, "dedup", False)))
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


def _record_outcome(event: Event) -> None:
    """The upload's outcome, once its event is acknowledged."""
    if isinstance(event, BlobStored):
        metrics.record_upload("deduplicated" if event.dedup else "stored", size=event.size)
    elif isinstance(event, BlobUploadFailed):
        metrics.record_upload("failed", reason=event.reason)


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
    blog.configure(service="worker")
    settings = Settings.from_env()
    if settings.blob_niceness:
        # bulk transfer yields the CPU to latency-sensitive metadata work on the same host
        os.nice(settings.blob_niceness)
    from blobledger.infra import bootstrap

    bootstrap.observe(settings, "worker")
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
