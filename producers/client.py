"""The client API: validate, authorize, publish, and (optionally) wait for the outcome.

Writes never touch Postgres directly; they become events on the log, and the fold
decides. ``wait=True`` blocks until the projection has passed the published offset and
returns the outcome (raising :class:`ConflictError` and friends for rejections), which
gives callers read-your-writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from blobledger.infra import logging as blog
from blobledger.infra.settings import Settings
from blobledger.producers import validation as v
from blobledger.schemas.errors import (
    AuthorizationError,
    ConflictError,
    NotFoundError,
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
    now_us,
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
    if reason in ("not_found", "deleted"):
        raise NotFoundError(f"object {outcome.object_id} {reason.replace('_', ' ')}")
    raise RejectedError(f"rejected: {reason}", reason=reason)


class Client:
    """One actor's handle on blobledger. Thread-safe for publishing and waiting.

    It receives its adapters (see :func:`blobledger.infra.bootstrap.client`, which wires the
    real ones, and :mod:`blobledger.infra.memory` for in-memory twins): a publisher for the
    log, the read side's outcome waiter and queries, and a factory of the blob store (made
    on first use: most commands never touch S3)."""

    def __init__(
        self,
        settings: Settings,
        *,
        actor: str,
        tenant: str | None = None,
        publisher: EventPublisher,
        outcomes: OutcomeSource,
        queries: ObjectQueries,
        blob_store: BlobStoreFactory,
    ) -> None:
        self.settings = settings
        self.actor = v.validate_actor(actor)
        self.tenant = tenant or settings.tenant
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
            import uuid

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
            raise NotFoundError(f"object {object_id} is deleted")
        if not may(acl, self.actor, permission):
            raise AuthorizationError(
                f"{self.actor} lacks {permission!r} on object {object_id}; ask an admin of the "
                "object to grant it (`blobledger object acl`)"
            )

    def _send(self, event: Event, wait: bool) -> Result:
        receipt = self.publisher.publish(self.settings.events_topic, event)
        if not wait:
            return Result(receipt)
        outcome = self.wait(receipt)
        return Result(receipt, outcome)

    def wait(self, receipt: Receipt, timeout: float | None = None) -> EventOutcome:
        """Block until the projection has folded ``receipt`` and return its outcome,
        raising the matching error when it was rejected."""
        outcome = self.outcomes.wait(receipt, timeout)
        _raise_for(outcome)
        return outcome

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
            content_type=content_type,
        )
        return self._send(event, wait)

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

    def delete(
        self,
        ref: str,
        *,
        expected_version: int | None = None,
        reason: str | None = None,
        wait: bool = True,
    ) -> Result:
        oid = self.object_id(ref)
        self._authorize(oid, "write")
        return self._send(ObjectDeleted(self._envelope(oid, expected_version), reason=reason), wait)

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
        source = _normalize_source(source)
        declared_sha256 = v.validate_sha256(declared_sha256)
        declared_size = v.validate_size(declared_size, max_size=s.max_blob_size)
        self._authorize(oid, "write")
        env = self._envelope(oid, expected_version)
        upload_id = new_id()
        deadline = now_us() + s.upload_deadline_seconds * 1_000_000
        attached = BlobAttached(
            env,
            upload_id=upload_id,
            source=source,
            declared_sha256=declared_sha256,
            declared_size=declared_size,
            content_type=content_type,
            deadline=deadline,
        )
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
        outcome = self.wait(receipt) if wait else None
        return AttachResult(receipt, outcome, upload_id=upload_id)

    # --- reads ------------------------------------------------------------------------------------
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

    def history(self, ref: str) -> list[HistoryEntry]:
        return self.queries.history(self.object_id(ref), actor=self.actor)

    def as_of(
        self, ref: str, *, version: int | None = None, at: datetime | None = None
    ) -> HistoryEntry:
        return self.queries.as_of(self.object_id(ref), actor=self.actor, version=version, at=at)

    def audit(
        self, actor: str | None = None, *, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        return self.queries.audit(actor or self.actor, since=since, limit=limit)

    def upload(self, upload_id: str) -> UploadView:
        return self.queries.upload(upload_id)

    def wait_upload(self, upload_id: str, timeout: float | None = None) -> UploadView:
        """Block until an upload is terminal (stored, compensated or orphaned) in the read
        model and return it; blob transfers take as long as they take, so this is separate
        from the metadata call that started them."""
        deadline = time.monotonic() + (timeout or self.settings.upload_deadline_seconds)
        while True:
            try:
                view = self.queries.upload(upload_id)
                if view.state != "pending":
                    return view
            except NotFoundError:
                pass  # the attach itself is not folded yet
            if time.monotonic() > deadline:
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

    def open_blob(
        self, ref: str, version: int | None = None, byte_range: ByteRange | None = None
    ) -> ObjectBlob:
        """A streaming reader of the object's committed blob (at ``version``, default the
        current one), with range support; a full read verifies the SHA-256. While a newer
        upload is pending the last committed blob is served and ``.notice`` says so."""
        from blobledger.producers.reader import open_object_blob

        return open_object_blob(self, ref, s3=self.s3, version=version, byte_range=byte_range)

    def presigned_url(self, ref: str, *, expires_seconds: int = 3600) -> str:
        """A presigned GET URL of the object's committed blob."""
        from blobledger.producers.reader import presigned_get_url

        view = self.get(ref)
        if view.blob is None:
            raise NotFoundError(f"object {view.key} has no committed blob yet")
        return presigned_get_url(
            self.s3, self.settings.s3_bucket, view.blob.key, expires=expires_seconds
        )


def _normalize_source(source: str) -> str:
    """Local paths become absolute ``file://`` URIs (the worker may run elsewhere in the
    tree); http(s) URLs pass through; anything else is refused."""
    if source.startswith(("http://", "https://", "file://")):
        return source
    if "://" in source:
        raise ValidationError(
            f"unsupported source {source!r}: use a local path, file://, http:// or https://"
        )
    return "file://" + os.path.abspath(source)
