"""The client API: validate, authorize, publish, and (optionally) wait for the outcome.

Writes never touch Postgres directly; they become events on the log, and the fold
decides. ``wait=True`` blocks until the projection has passed the published offset and
returns the outcome (raising :class:`ConflictError` and friends for rejections), which
gives callers read-your-writes.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from blobledger.infra import logging as blog
from blobledger.infra import tracing
from blobledger.infra.settings import Settings
from blobledger.producers import validation as v
from blobledger.schemas.auth import Key
from blobledger.schemas.errors import (
    AuthorizationError,
    BlobledgerError,
    ConflictError,
    DomainError,
    NotFoundError,
    NotRunningError,
    ObjectDeletedError,
    RejectedError,
    TimeoutExpired,
    TransientError,
    ValidationError,
)
from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    UploadRequested,
    new_id,
    object_id_for,
)
from blobledger.schemas.permissions import may
from blobledger.schemas.ports import (
    BlobStore,
    BlobStoreFactory,
    EventPublisher,
    ObjectQueries,
    OutcomeSource,
)
from blobledger.schemas.receipts import EventOutcome, Receipt
from blobledger.schemas.views import AuditEntry, HistoryEntry, ObjectView, Page, UploadView

log = blog.get_logger(__name__)

if TYPE_CHECKING:
    from blobledger.producers.reader import ByteRange, ObjectBlob


@dataclass(frozen=True)
class Result:
    """What a write returns: where it landed and, when waited for, the outcome."""

    receipt: Receipt
    outcome: EventOutcome | None = None
    upload_id: str | None = None

    @property
    def event_id(self) -> str:
        return self.receipt.event_id

    @property
    def object_id(self) -> str:
        return self.receipt.object_id

    @property
    def version(self) -> int | None:
        return self.outcome.version if self.outcome else None


@dataclass(frozen=True)
class AttachResult(Result):
    """What ``attach_blob`` returns: a :class:`Result` that always names its upload."""

    upload_id: str = field(kw_only=True)


def _raise_for(outcome: EventOutcome) -> None:
    if outcome.accepted:
        return
    reason = outcome.reason or "rejected"
    if reason == "conflict":
        raise ConflictError(
            f"object {outcome.object_id} is at version {outcome.version}; re-read it and retry "
            "with that expected_version",
            current_version=outcome.version,
        )
    if reason == "forbidden":
        raise AuthorizationError(f"not permitted on object {outcome.object_id}")
    if reason == "not_found":
        raise NotFoundError(
            f"object {outcome.object_id} not found; create it first (`blobledger object create`)"
        )
    if reason == "deleted":
        raise ObjectDeletedError(f"object {outcome.object_id} was deleted")
    raise RejectedError(f"rejected: {reason}", reason=reason)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _names_ref(
    method: Callable[Concatenate[Client, str, _P], _R],
) -> Callable[Concatenate[Client, str, _P], _R]:
    """Errors about the object name it as the caller did: ``'docs/a.txt'``, not only the id
    derived from it, which means nothing to whoever typed the key."""

    @functools.wraps(method)
    def named(self: Client, ref: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, ref, *args, **kwargs)
        except DomainError as e:
            self._say_ref(e, ref)
            raise

    return named


class Client:
    """One actor's handle on blobledger. Thread-safe for publishing and waiting.

    It receives its adapters (see :func:`blobledger.infra.bootstrap.client`, which wires the
    real ones, and :mod:`blobledger.infra.memory` for in-memory twins): the key that proves
    who is acting (the publisher signs with it), a publisher for the log, the read side's
    outcome waiter and queries, and a factory of the blob store (made on first use: most
    commands never touch S3)."""

    def __init__(
        self,
        settings: Settings,
        *,
        actor: str,
        tenant: str | None = None,
        key: Key,
        publisher: EventPublisher,
        outcomes: OutcomeSource,
        queries: ObjectQueries,
        blob_store: BlobStoreFactory,
    ) -> None:
        v.check_limits(settings)
        self.settings = settings
        self.actor = v.validate_actor(actor)
        if not key.may_act_as(self.actor):
            raise AuthorizationError(
                f"key {key.key_id} ({key.kind} key of {key.principal!r}) may not act as "
                f"{self.actor!r}: use that principal's own key (BLOBLEDGER_KEY_FILE) or a "
                "service key that lists it (`blobledger key create --service`)"
            )
        #: the key ``publisher`` signs with: what the projector checks ``actor`` against
        self.key = key
        self.tenant = v.validate_tenant(tenant or settings.tenant)
        self.publisher = publisher
        self.outcomes = outcomes
        self.queries = queries
        self._blob_store = blob_store
        self._s3: BlobStore | None = None

    def close(self) -> None:
        self.publisher.close()
        self.outcomes.close()
        self.queries.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------------------
    def object_id(self, ref: str) -> str:
        """Accept an object id or a key (ids are derived from tenant + key)."""
        try:
            return str(uuid.UUID(ref))
        except ValueError:
            return object_id_for(
                self.tenant, v.validate_key(ref, max_length=self.settings.max_key_length)
            )

    def _envelope(
        self, object_id: str, expected_version: int | None, correlation_id: str | None = None
    ) -> Envelope:
        return Envelope(
            object_id=object_id,
            actor=self.actor,
            tenant=self.tenant,
            expected_version=v.validate_expected_version(expected_version),
            correlation_id=correlation_id or new_id(),
        )

    def _authorize(self, object_id: str, permission: str) -> None:
        """Refuse early when the projection already shows the actor lacks permission. The
        fold enforces the same rule (:func:`blobledger.schemas.permissions.may`) on the log."""
        try:
            found = self.queries.acl_of(object_id)
        except TransientError as e:
            # the read model is unreachable: publishing must not depend on it, and the
            # fold applies the same rule to the event anyway
            log.warning("authorization pre-check skipped: read model unavailable", error=str(e))
            return
        if found is None:
            return  # not projected yet: let the fold decide
        acl, _version, deleted = found
        if deleted:
            raise self._deletion(object_id)
        if not may(acl, self.actor, permission):
            raise AuthorizationError(
                f"{self.actor} lacks {permission!r} on object {object_id}; ask an admin of the "
                "object to grant it (`blobledger object acl`)"
            )

    def _send(self, event: Event, wait: bool) -> Result:
        v.check_event(event)  # the whole contract, as the fold will apply it
        # the command's trace: the event carries it to the fold (infra/publisher.py)
        with tracing.event_span("blobledger.command", event, kind=SpanKind.PRODUCER):
            receipt = self.publisher.publish(self.settings.events_topic, event)
            if not wait:
                return Result(receipt)
            outcome = self.wait(receipt)
            return Result(receipt, outcome)

    def wait(self, receipt: Receipt, timeout: float | None = None) -> EventOutcome:
        """Block until the projection has folded ``receipt`` and return its outcome,
        raising the matching error when it was rejected."""
        outcome = self.outcomes.wait(receipt, timeout)
        if outcome.reason == "deleted":
            raise self._deletion(outcome.object_id)
        _raise_for(outcome)
        return outcome

    def _deletion(self, object_id: str) -> ObjectDeletedError:
        """The refusal of a deleted object as the read model tells it: the deleting
        version, actor and time when this actor may read the object."""
        try:
            self.queries.get(object_id, actor=self.actor)
        except ObjectDeletedError as e:
            return e
        except BlobledgerError:
            pass  # the read model is behind or unreachable: say what the fold said
        return ObjectDeletedError(f"object {object_id} was deleted")

    def _say_ref(self, error: DomainError, ref: str) -> None:
        """Put the key the caller gave in place of its derived id in ``error``'s message."""
        try:
            uuid.UUID(ref)
            return  # the caller gave the id itself
        except ValueError:
            pass
        try:
            object_id = self.object_id(ref)
        except BlobledgerError:
            return  # not a valid key: the error is about that
        if error.args and isinstance(error.args[0], str) and object_id in error.args[0]:
            error.args = (error.args[0].replace(object_id, repr(ref)), *error.args[1:])

    # --- writes ---------------------------------------------------------------------------------
    def create(
        self,
        key: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        tags: Iterable[str] = (),
        content_type: str | None = None,
        wait: bool = True,
    ) -> Result:
        s = self.settings
        key = v.validate_key(key, max_length=s.max_key_length)
        event = ObjectCreated(
            self._envelope(object_id_for(self.tenant, key), 0),
            key=key,
            metadata_json=v.metadata_json(
                metadata, max_bytes=s.max_metadata_bytes, max_depth=s.max_metadata_depth
            ),
            tags=v.validate_tags(tags),
            content_type=v.validate_content_type(content_type),
        )
        return self._send(event, wait)

    @_names_ref
    def update(
        self,
        ref: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        wait: bool = True,
    ) -> Result:
        """Merge ``patch`` into the metadata (RFC 7396: a None value removes the key)."""
        s = self.settings
        oid = self.object_id(ref)
        text = v.metadata_json(
            patch, max_bytes=s.max_metadata_bytes, max_depth=s.max_metadata_depth
        )
        self._authorize(oid, "write")
        return self._send(
            MetadataUpdated(self._envelope(oid, expected_version), patch_json=text), wait
        )

    @_names_ref
    def tag(
        self,
        ref: str,
        *,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        expected_version: int | None = None,
        wait: bool = True,
    ) -> Result:
        oid = self.object_id(ref)
        added, removed = v.validate_tags(add), v.validate_tags(remove)
        if not added and not removed:
            raise ValidationError("tag needs at least one tag to add or remove")
        self._authorize(oid, "write")
        return self._send(
            TagsChanged(self._envelope(oid, expected_version), added=added, removed=removed), wait
        )

    @_names_ref
    def set_acl(
        self,
        ref: str,
        principal: str,
        permissions: Iterable[str],
        *,
        expected_version: int | None = None,
        wait: bool = True,
    ) -> Result:
        """Replace what ``principal`` may do on the object (an empty list revokes)."""
        oid = self.object_id(ref)
        event = AclChanged(
            self._envelope(oid, expected_version),
            principal=v.validate_principal(principal),
            permissions=v.validate_permissions(permissions),
        )
        self._authorize(oid, "admin")
        return self._send(event, wait)

    @_names_ref
    def delete(
        self,
        ref: str,
        *,
        expected_version: int | None = None,
        reason: str | None = None,
        wait: bool = True,
    ) -> Result:
        oid = self.object_id(ref)
        reason = v.validate_note(reason, "delete reason")
        self._authorize(oid, "write")
        return self._send(ObjectDeleted(self._envelope(oid, expected_version), reason=reason), wait)

    @_names_ref
    def attach_blob(
        self,
        ref: str,
        source: str,
        *,
        expected_version: int | None = None,
        declared_sha256: str | None = None,
        declared_size: int | None = None,
        content_type: str | None = None,
        wait: bool = True,
    ) -> AttachResult:
        """Publish the provisional ``BlobAttached`` event, then the upload command.

        The command goes out only after the event is acknowledged, so a worker's
        completion always lands behind the attach in the object's partition. With
        ``wait`` the call returns once the attach is folded (the upload is pending), not
        when the bytes are stored: blob traffic never holds up the metadata path."""
        s = self.settings
        oid = self.object_id(ref)
        local = _normalize_source(source, s)
        declared_sha256 = v.validate_sha256(declared_sha256)
        declared_size = v.validate_size(declared_size, max_size=s.max_blob_size)
        content_type = v.validate_content_type(content_type)
        self._authorize(oid, "write")
        env = self._envelope(oid, expected_version)
        upload_id = new_id()
        # from the event's own time: the fold measures the deadline from it
        deadline = env.occurred_at + s.upload_deadline_seconds * 1_000_000
        spooled: Path | None = None
        if isinstance(local, Path):
            source, spooled = _place_for_worker(local, s, upload_id)
        else:
            source = local
        # one trace: the attach's fold, the worker's transfer, the completion's fold
        with tracing.event_span("blobledger.command", kind=SpanKind.PRODUCER) as span:
            try:
                attached = BlobAttached(
                    env,
                    upload_id=upload_id,
                    source=source,
                    declared_sha256=declared_sha256,
                    declared_size=declared_size,
                    content_type=content_type,
                    deadline=deadline,
                )
                v.check_event(attached)  # the command carries the same fields
                span.set_attributes(tracing.event_attributes(attached))
                receipt = self.publisher.publish(s.events_topic, attached)
                command = UploadRequested(
                    env.caused(actor=self.actor),
                    upload_id=upload_id,
                    source=source,
                    declared_sha256=declared_sha256,
                    declared_size=declared_size,
                    content_type=content_type,
                    deadline=deadline,
                )
                self.publisher.publish(s.commands_topic, command)
            except BaseException:
                if spooled is not None:  # no command went out: no worker reads or removes it
                    shutil.rmtree(spooled, ignore_errors=True)
                raise
            outcome = self.wait(receipt) if wait else None
            return AttachResult(receipt, outcome, upload_id=upload_id)

    # --- reads ------------------------------------------------------------------------------------
    @_names_ref
    def get(self, ref: str) -> ObjectView:
        return self.queries.get(self.object_id(ref), actor=self.actor)

    def list_objects(
        self,
        *,
        prefix: str = "",
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        return self.queries.list_objects(
            actor=self.actor, prefix=prefix, tag=tag, cursor=cursor, limit=limit
        )

    @_names_ref
    def history(self, ref: str) -> list[HistoryEntry]:
        return self.queries.history(self.object_id(ref), actor=self.actor)

    @_names_ref
    def as_of(
        self, ref: str, *, version: int | None = None, at: datetime | None = None
    ) -> HistoryEntry:
        return self.queries.as_of(self.object_id(ref), actor=self.actor, version=version, at=at)

    def audit(
        self, actor: str | None = None, *, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """What ``actor`` (default: this client's actor) did. Another actor's activity is
        shown only on objects this client's actor administers."""
        return self.queries.audit(actor or self.actor, actor=self.actor, since=since, limit=limit)

    def upload(self, upload_id: str) -> UploadView:
        """An upload of an object this actor may read (NotFoundError otherwise)."""
        return self.queries.upload(upload_id, actor=self.actor)

    #: an upload pending this long makes :meth:`wait_upload` ask whether a blob worker
    #: runs at all (a running one has usually finished a small upload by then)
    UPLOAD_ASK_AFTER = 1.0
    #: how long no worker must be seen before wait_upload gives up (a restart is not absence)
    UPLOAD_ABSENT_GRACE = 12.0

    def wait_upload(self, upload_id: str, timeout: float | None = None) -> UploadView:
        """Block until an upload is terminal (stored, compensated or orphaned) in the read
        model and return it; blob transfers take as long as they take, so this is separate
        from the metadata call that started them. With no blob worker running it raises
        :class:`~blobledger.schemas.errors.NotRunningError` within seconds, as ``put``
        does (infra/liveness.py), instead of waiting out the upload deadline."""
        deadline = time.monotonic() + (timeout or self.settings.upload_deadline_seconds)
        seen = False
        ask_at: float | None = None
        worker_check: Callable[[], None] | None = None
        absent_since: float | None = None
        while True:
            try:
                view = self.queries.upload(upload_id, actor=self.actor)
                seen = True
                if view.state != "pending":
                    return view
                if ask_at is None:
                    ask_at = time.monotonic() + self.UPLOAD_ASK_AFTER
                elif time.monotonic() >= ask_at:
                    if worker_check is None:
                        # here, not at the top: the Client holds no driver of its own
                        from blobledger.infra.liveness import WORKER, Liveness

                        worker_check = Liveness(self.settings).watch(
                            WORKER, f"upload {upload_id} stays pending until one does"
                        )
                    try:
                        worker_check()  # asks the broker at most every 5 s
                        absent_since = None
                    except NotRunningError:
                        view = self.queries.upload(upload_id, actor=self.actor)
                        if view.state != "pending":  # finished while we asked
                            return view
                        # a worker restarting (a rolling restart, a crash the supervisor
                        # heals) is not "no worker": only an absence that lasts counts
                        now = time.monotonic()
                        absent_since = absent_since if absent_since is not None else now
                        if now - absent_since >= self.UPLOAD_ABSENT_GRACE:
                            raise
            except NotFoundError:
                pass  # the attach is not folded yet (or the upload is not ours to see)
            if time.monotonic() > deadline:
                if not seen:
                    raise TimeoutExpired(
                        f"upload {upload_id} was not found: not projected yet, or on an "
                        f"object {self.actor} may not read"
                    )
                raise TimeoutExpired(
                    f"upload {upload_id} is still pending; is a blob worker running "
                    "(`blobledger worker`)? The reaper compensates it once its deadline passes"
                )
            time.sleep(0.1)

    @property
    def s3(self) -> BlobStore:
        if self._s3 is None:
            self._s3 = self._blob_store()
        return self._s3

    @_names_ref
    def open_blob(
        self, ref: str, version: int | None = None, byte_range: ByteRange | None = None
    ) -> ObjectBlob:
        """A streaming reader of the object's committed blob (at ``version``, default the
        current one), with range support; a full read verifies the SHA-256. While a newer
        upload is pending the last committed blob is served and ``.notice`` says so."""
        from blobledger.producers.reader import open_object_blob

        return open_object_blob(self, ref, s3=self.s3, version=version, byte_range=byte_range)

    @_names_ref
    def presigned_url(
        self,
        ref: str,
        *,
        version: int | None = None,
        expires_seconds: int | None = None,
        filename: str | None = None,
    ) -> str:
        """A presigned GET URL of the object's committed blob (at ``version``), signed only
        when this actor may read the object. Whoever holds the URL reads the blob without
        credentials until it expires: ``expires_seconds`` must lie in 1 to
        ``settings.presign_max_seconds`` (default one hour)."""
        from blobledger.producers.reader import presign_object_blob

        return presign_object_blob(
            self, ref, s3=self.s3, version=version, expires=expires_seconds, filename=filename
        ).url


def _normalize_source(source: str, settings: Settings) -> str | Path:
    """What ``source`` names, checked before anything is published: an http(s) or
    ``file://`` URI to send as it is, or a local path (the caller's file) for
    :func:`_place_for_worker`.

    A URI is resolved where the worker runs, by the worker, within its source policy
    (``file://`` only under its source roots). A URL never carries credentials: they would
    be stored in the log and the read model for good, so the caller is told to give the
    worker a header for the host instead. A plain path is the caller's own file; it is
    refused only if it would have to be spooled and spooling is off."""
    if source.startswith(("http://", "https://")):
        _check_url(source)
        return source
    if source.startswith("file://"):
        return source
    if "://" in source:
        raise ValidationError(
            f"unsupported source {source!r}: use a local path, file://, http:// or https://"
        )
    if not source:
        raise ValidationError("empty source path")
    path = Path(os.path.realpath(source))
    if settings.spool_dir is None and _root_of(path, settings) is None:
        raise ValidationError(
            f"{source} is outside every source root the worker reads and spooling is off: "
            "add its directory to BLOBLEDGER_SOURCE_ROOTS (for the worker too), set "
            "BLOBLEDGER_SOURCE_SPOOL=true where client and worker share a host, or serve "
            "it over https"
        )
    return path


def _check_url(url: str) -> None:
    """An http(s) URL the worker can fetch, with no secret in it (messages never echo it)."""
    try:
        parts = urlsplit(url)
        credentials = parts.username is not None or parts.password is not None
        host = parts.hostname
    except ValueError:
        raise ValidationError("malformed source URL") from None
    if credentials:
        # the message must not echo the URL: it holds the secret
        raise ValidationError(
            f"the source URL for {host or 'its host'} carries credentials (user:password@); "
            "they would be stored in the log and the read model. Drop them from the URL and "
            "give the worker a header for the host instead, e.g. "
            f'BLOBLEDGER_SOURCE_HEADERS=\'{{"{host}": "Authorization: Bearer ..."}}\''
        )
    if not host:
        raise ValidationError("the source URL names no host")


def _root_of(path: Path, settings: Settings) -> Path | None:
    """The source root ``path`` (a real path) lies under, if any."""
    for root in settings.source_root_dirs:
        real = Path(os.path.realpath(root))
        if path == real or real in path.parents:
            return real
    return None


def _place_for_worker(path: Path, settings: Settings, upload_id: str) -> tuple[str, Path | None]:
    """Put the caller's file where the worker may read it; its ``file://`` URI and the
    spool entry made for it (None if the file is sent as it is).

    The worker reads files only under its source roots, lending its rights to no
    command; a file elsewhere reaches a root through the spool, with the caller's rights:
    the client hard-links it to ``<spool>/<upload id>/<name>``, a root of that upload only.
    A hard link is instant and free whatever the size, and reading it is reading the
    caller's file. Across filesystems (or where the kernel refuses the link) it is copied.
    A file under a root is sent as it is, so the worker's stat cache keeps recognizing it
    (a link would change the inode's ctime, which the cache rightly treats as a change).
    A path that does not exist is not refused here: it is sent as its would-be spool entry
    and the worker reports ``source_not_found``, as for a missing file under a root. The
    worker removes the entry once the upload is terminal, the reaper any leftover."""
    spool = settings.spool_dir
    if spool is None or _root_of(path, settings) is not None:
        return path.as_uri(), None
    entry = spool / upload_id
    target = entry / (path.name or "source")
    try:
        st = path.stat()
    except FileNotFoundError:
        return target.as_uri(), None
    except OSError as e:
        raise ValidationError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError(f"{path} is not a regular file")
    try:
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry.mkdir(mode=0o700)
    except OSError as e:
        raise ValidationError(f"cannot create the spool entry {entry}: {e.strerror}") from None
    try:
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)  # another filesystem, or a link the kernel refuses
    except OSError as e:
        shutil.rmtree(entry, ignore_errors=True)
        raise ValidationError(f"cannot read {path}: {e.strerror}") from None
    return target.as_uri(), entry
