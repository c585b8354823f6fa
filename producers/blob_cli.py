"""``blobledger put`` and ``blobledger get``.

``put`` publishes the attach (through the client API) and then follows the worker: the
progress bar comes from the ephemeral ``<prefix>.blob-progress`` topic, the verdict from
the read model (the only source of truth), so a lost progress message never changes the
answer. ``get`` streams the committed blob to a file or stdout and verifies its SHA-256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from blobledger.infra.kafka import make_consumer
from blobledger.infra.liveness import WORKER, Liveness
from blobledger.infra.progress import (
    ProgressDisplay,
    add_progress_argument,
    open_display,
    progress_mode,
)
from blobledger.infra.s3 import make_s3_client
from blobledger.infra.settings import Settings
from blobledger.infra.topics import require_broker
from blobledger.producers.reader import (
    ByteRange,
    check_expires,
    open_object_blob,
    presign_object_blob,
)
from blobledger.schemas.errors import (
    NotFoundError,
    PermanentError,
    TimeoutExpired,
    ValidationError,
)
from blobledger.schemas.ports import BlobStore
from blobledger.schemas.views import UploadView

if TYPE_CHECKING:
    from blobledger.producers.client import Client

TERMINAL = ("stored", "compensated", "orphaned")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor",
        default=os.environ.get("BLOBLEDGER_ACTOR", os.environ.get("USER", "cli")),
        help="who is acting (default $BLOBLEDGER_ACTOR or $USER)",
    )
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _client(settings: Settings, args: argparse.Namespace) -> Client:
    from blobledger.infra import bootstrap  # lazy: the client pulls Kafka and Postgres

    return bootstrap.client(settings, actor=args.actor, tenant=args.tenant)


# --- put -------------------------------------------------------------------------------
class ProgressFollower:
    """Reads upload progress from the progress topic, starting at its current end."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.progress_topic
        self.consumer = make_consumer(
            settings,
            f"{settings.topic_prefix}.put-{uuid.uuid4()}",
            **{"auto.offset.reset": "latest"},
        )
        try:
            md = self.consumer.list_topics(
                self.topic, timeout=settings.connect_timeout_seconds
            ).topics.get(self.topic)
            parts = sorted(md.partitions) if md is not None and md.error is None else []
        except KafkaException:
            parts = []
        # assign (no group join wait) at the end: only this upload's future messages matter
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])

    def poll(self, upload_id: str, timeout: float) -> list[dict[str, Any]]:
        """Every report about ``upload_id`` that arrives within ``timeout``, in order (a
        display throttles itself; dropping all but the newest here hid the phases)."""
        found: list[dict[str, Any]] = []
        end = time.monotonic() + timeout
        key = upload_id.encode()
        while (left := end - time.monotonic()) > 0:
            msg = self.consumer.poll(left)
            if msg is None:
                break
            value = msg.value()
            if not msg.error() and value is not None and msg.key() == key:
                with contextlib.suppress(ValueError):  # not a progress body: skip it
                    body = json.loads(value)
                    if isinstance(body, dict):
                        found.append(body)
        return found

    def close(self) -> None:
        self.consumer.close()


def show_report(display: ProgressDisplay, p: dict[str, Any]) -> None:
    """One worker report on ``display``: bytes done in the named phase (while uploading,
    bytes S3 has acknowledged)."""
    if "bytes_done" not in p:
        return
    total = p.get("total")
    display.update(
        int(p.get("bytes_done") or 0),
        int(total) if total else None,
        phase=str(p.get("state") or "uploading"),
    )


def follow_upload(
    client: Client,
    follower: ProgressFollower | None,
    upload_id: str,
    *,
    timeout: float,
    display: ProgressDisplay | None = None,
    watch: Callable[[], None] | None = None,
) -> UploadView:
    """Show progress until the read model says the upload is terminal; its UploadView.
    ``watch`` raises when nothing will ever finish it (no blob worker runs)."""
    deadline = time.monotonic() + timeout
    last_check = 0.0
    while time.monotonic() < deadline:
        if follower is not None:
            for p in follower.poll(upload_id, 0.25):
                if display is not None:
                    show_report(display, p)
        else:
            time.sleep(0.25)
        if display is not None:
            display.tick()
        if time.monotonic() - last_check >= 0.5:
            last_check = time.monotonic()
            try:
                view = client.upload(upload_id)
            except NotFoundError:
                continue
            if view.state in TERMINAL:
                if display is not None:
                    finish_display(display, view)
                return view
            if watch is not None:
                watch()
    raise TimeoutExpired(
        f"upload {upload_id} not finished after {timeout:.0f}s; "
        f"`blobledger object get` shows its state later"
    )


def finish_display(display: ProgressDisplay, view: UploadView) -> None:
    """The final line says what the read model says."""
    if view.state == "stored":
        size = view.size or 0
        note = " (dedup: no bytes sent)" if view.dedup else ""
        display.finish(size, size, phase="stored", note=note)
    else:
        display.finish(phase=view.state, note=f" ({view.reason})" if view.reason else "")


def put_main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger put", description="Attach a file or URL to an object."
    )
    p.add_argument("object", help="object key or id")
    p.add_argument(
        "source",
        help="local file path (spooled for the worker unless under a source root), "
        "file:// URI of a file under the worker's source roots, or http(s) URL",
    )
    p.add_argument(
        "--sha256",
        default=None,
        help="declared SHA-256 (hex): the bytes read must hash to it (stored content is "
        "then not sent again)",
    )
    p.add_argument("--size", type=int, default=None, help="declared size in bytes")
    p.add_argument("--content-type", default=None)
    p.add_argument("--expected-version", "-e", type=int, default=None)
    p.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="return once the attach is accepted (upload pending)",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds to follow (default: upload deadline)"
    )
    _common(p)
    add_progress_argument(p)
    args = p.parse_args(argv)
    if "://" not in args.source:
        check_source_file(args.source)
    settings = settings or Settings.from_env()
    mode = progress_mode(args.progress, as_json=args.json)
    # one metadata request: with the broker away, fail now in one line rather than after
    # the progress follower's and the publisher's own waits
    require_broker(settings)
    with _client(settings, args) as client:
        # subscribed before the attach: the worker may report before attach_blob returns
        follower = ProgressFollower(settings) if args.follow and mode != "none" else None
        try:
            result = client.attach_blob(
                args.object,
                args.source,
                expected_version=args.expected_version,
                declared_sha256=args.sha256,
                declared_size=args.size,
                content_type=args.content_type,
            )
            upload_id = result.upload_id
            if not args.follow:
                _print(
                    args,
                    {"upload_id": upload_id, "state": "pending", "object_id": result.object_id},
                    f"upload {upload_id} pending",
                )
                return 0
            with open_display("put", "bytes", mode, phase="waiting") as display:
                view = follow_upload(
                    client,
                    follower,
                    upload_id,
                    timeout=args.timeout or settings.upload_deadline_seconds + 60,
                    display=display,
                    watch=Liveness(settings).watch(
                        WORKER, f"upload {upload_id} stays pending until one does"
                    ),
                )
        finally:
            if follower is not None:
                follower.close()
    body = view.to_json()
    if view.state == "stored":
        _print(
            args,
            body,
            f"stored {view.size} bytes sha256 {view.sha256}"
            f"{' (dedup: no bytes sent)' if view.dedup else ''}",
        )
        return 0
    _print(args, body, f"upload {view.state}: {view.reason}")
    return 1


# --- get -------------------------------------------------------------------------------
def get_main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger get", description="Stream an object's blob, verifying it."
    )
    p.add_argument("object", help="object key or id")
    p.add_argument("-o", "--output", default=None, help="file to write (default stdout)")
    p.add_argument("--version", type=int, default=None, help="the blob committed at this version")
    p.add_argument(
        "--range", dest="byte_range", default=None, help="START-END or START- (not verified)"
    )
    p.add_argument("--url", action="store_true", help="print a presigned GET URL instead")
    p.add_argument(
        "--expires",
        type=int,
        default=None,
        help="presigned URL lifetime in seconds (default 3600); at most "
        "$BLOBLEDGER_PRESIGN_MAX_SECONDS, 7 days unless set lower",
    )
    _common(p)
    args = p.parse_args(argv)
    if args.expires is not None and not args.url:
        p.error("--expires is the lifetime of a --url; without --url nothing expires")
    if args.output is not None:
        check_output_path(args.output, os.path.basename(args.object))  # before any fetch
    settings = settings or Settings.from_env()
    s3 = make_s3_client(settings)
    if args.url:
        return _get_url(args, settings, s3)
    byte_range = ByteRange.parse(args.byte_range) if args.byte_range else None
    with _client(settings, args) as client:
        blob = open_object_blob(
            client, args.object, s3=s3, version=args.version, byte_range=byte_range
        )
    if blob.notice:
        print(f"blobledger get: {blob.notice}", file=sys.stderr)
    info = {
        "object_id": blob.object_id,
        "version": blob.version,
        "sha256": blob.sha256,
        "size": blob.size,
        "key": blob.key,
        "pending_upload_id": blob.pending_upload_id,
        "notice": blob.notice,
    }
    written = _copy(blob.reader, args.output)
    if args.output is not None or args.json:
        _print(
            args,
            {**info, "bytes": written, "verified": blob.reader.verified, "output": args.output},
            f"wrote {written} bytes to {args.output}"
            + (" (sha256 verified)" if blob.reader.verified else ""),
            stream=sys.stderr if args.output is None else sys.stdout,
        )
    return 0


def _get_url(args: argparse.Namespace, settings: Settings, s3: BlobStore) -> int:
    """``get --url``: a presigned URL, only after the actor's read permission is checked;
    a lifetime outside the allowed range fails before anything is looked up."""
    check_expires(args.expires, settings.presign_max_seconds)
    with _client(settings, args) as client:
        signed = presign_object_blob(
            client,
            args.object,
            s3=s3,
            version=args.version,
            expires=args.expires,
            filename=os.path.basename(args.object),
        )
    if signed.notice:
        print(f"blobledger get: {signed.notice}", file=sys.stderr)
    info = {
        "object_id": signed.object_id,
        "version": signed.version,
        "sha256": signed.sha256,
        "size": signed.size,
        "key": signed.key,
        "pending_upload_id": signed.pending_upload_id,
        "notice": signed.notice,
        "expires_seconds": signed.expires_seconds,
        "url": signed.url,
    }
    _print(args, info, signed.url)
    return 0


def check_source_file(source: str) -> None:
    """A local ``put`` source is the caller's own file: refuse what no worker could read
    before anything is published (the worker would only report ``source_not_found``
    later). ``file://`` URIs name files on the worker's host and are its to check."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise ValidationError(
            f"{source!r} does not exist; check the path (a file on the worker's host is "
            "named file:///absolute/path)"
        ) from None
    except OSError as e:
        raise ValidationError(f"cannot read {source!r}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValidationError(
            f"{source!r} is a directory; put attaches one file (archive the directory first)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError(f"{source!r} is not a regular file")
    if not os.access(source, os.R_OK):
        raise ValidationError(f"cannot read {source!r}: permission denied")


def check_output_path(output: str, suggested_name: str = "") -> None:
    """Refuse an ``-o`` the blob could never be written to, before it is fetched."""
    if os.path.isdir(output):
        raise ValidationError(
            f"-o {output!r} is a directory; name a file in it, e.g. "
            f"{os.path.join(output, suggested_name or 'blob.bin')}"
        )
    directory = os.path.dirname(os.path.abspath(output))
    shown = os.path.dirname(output) or "."
    if not os.path.exists(directory):
        raise ValidationError(
            f"cannot write {output!r}: directory {shown!r} does not exist; create it first "
            f"(mkdir -p {shown})"
        )
    if not os.path.isdir(directory):
        raise ValidationError(f"cannot write {output!r}: {shown!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValidationError(
            f"cannot write {output!r}: no permission to create files in directory {shown!r}"
        )


def _copy(reader: Any, output: str | None) -> int:
    """Stream to ``output`` via a temp file renamed at the end, so a failed verification
    never leaves a plausible-looking file behind. Stdout, and an ``output`` that exists but
    is no regular file (``/dev/null``, a FIFO), are written directly: renaming over a
    device node would replace it."""
    if output is None:
        return _stream(reader, sys.stdout.buffer, None)
    if os.path.exists(output) and not os.path.isfile(output):
        with _writing(output), open(output, "wb") as sink:
            return _stream(reader, sink, output)
    directory = os.path.dirname(os.path.abspath(output))
    with _writing(output):
        fd, tmp = tempfile.mkstemp(prefix=".blobledger-get-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            written = _stream(reader, f, output)
        with _writing(output):
            os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return written


def _stream(reader: Any, sink: BinaryIO, output: str | None) -> int:
    """Copy ``reader`` to ``sink``, a MiB at a time; the bytes written. Write errors on a
    named ``output`` say so; stdout's (a closed pipe) reach the dispatcher as they are."""
    view = memoryview(bytearray(1024 * 1024))
    written = 0
    with reader:
        while n := reader.readinto(view):
            with _writing(output):
                sink.write(view[:n])
            written += n
    with _writing(output):
        sink.flush()
    return written


@contextlib.contextmanager
def _writing(output: str | None) -> Iterator[None]:
    """A local write failure (disk full, permission, a directory in the way) as one line
    that names ``output``; only the file operations run inside, so a failed read is
    reported as itself. The temp file is removed; ``output`` is left as it was. Stdout's
    errors (``output`` None: a closed pipe) go to the dispatcher as they are."""
    try:
        yield
    except OSError as e:
        if output is None:
            raise
        raise PermanentError(
            f"cannot write {output!r}: {e.strerror or e}; {output!r} is unchanged"
        ) from e


def _print(
    args: argparse.Namespace, body: dict[str, Any], text: str, stream: TextIO | None = None
) -> None:
    if args.json:
        print(json.dumps(body, default=str))
    else:
        print(text, file=stream or sys.stdout)
