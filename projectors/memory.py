"""The read model on plain dicts: the in-memory twin of the Postgres ReadModel.

It implements the same port (projectors/ports.py), the way the eventsourcing library pairs
a POPO recorder with each Postgres recorder: ``apply_batch``/``apply_isolating`` fold into
it unchanged, so the fold's callers can be exercised without a database, and
tests/contract checks that both models end up holding the same objects, uploads, outcomes,
blobs and checkpoints. A transaction is a snapshot that is put back when the block raises;
it holds the model's lock, so readers on other threads see committed tables only.

The read side over the same dicts: :class:`InMemoryQueries` (the twin of
projectors/queries.py) and :class:`InMemoryOutcomes` (of projectors/waiter.py), held to
the same contract suites as the Postgres ones (tests/contract/test_queries_contract.py,
test_outcomes_contract.py).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from blobledger.infra.settings import Settings
from blobledger.projectors.copytext import TextCache, dumps
from blobledger.projectors.fold import ObjectState, Upload
from blobledger.projectors.queries import _decode_cursor, _encode_cursor, _view
from blobledger.projectors.rows import (
    BatchWrite,
    BlobRow,
    OutcomeRow,
    VersionRow,
    blob_rows,
    merge_blob_rows,
)
from blobledger.schemas.errors import (
    AuthorizationError,
    NotFoundError,
    ObjectDeletedError,
    PermanentError,
    TimeoutExpired,
    TransientError,
    ValidationError,
)
from blobledger.schemas.events import datetime_to_us, us_to_datetime
from blobledger.schemas.permissions import EVERYONE, IMPLIED, SYSTEM_PREFIX, may
from blobledger.schemas.receipts import EventOutcome, Receipt
from blobledger.schemas.views import AuditEntry, HistoryEntry, ObjectView, Page, UploadView


class UniqueViolation(ValueError):
    """A row whose primary key is taken, refused as Postgres refuses it (same SQLSTATE,
    so :func:`~blobledger.projectors.applier.is_poison` blames the record alike)."""

    sqlstate = "23505"


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A ``blobs`` row."""

    size: int | None
    key: str
    ref_count: int
    first_stored_at: int | None  # microseconds since the epoch


class InMemoryReadModel:
    """The read model's tables as dicts (implements
    :class:`~blobledger.projectors.ports.ReadModelPort`)."""

    #: the dicts are the store: there is no memo to keep or to reset
    memo = False
    complete = False

    def __init__(self) -> None:
        self.objects: dict[str, ObjectState] = {}
        self.uploads: dict[str, Upload] = {}
        #: event_id -> outcome
        self.outcomes: dict[str, OutcomeRow] = {}
        #: (object_id, version) -> snapshot
        self.versions: dict[tuple[str, int], VersionRow] = {}
        #: object_id -> {(principal, permission)} (the ``acl_entries`` table)
        self.acl_entries: dict[str, frozenset[tuple[str, str]]] = {}
        #: sha256 -> blob
        self.blobs: dict[str, StoredBlob] = {}
        #: (topic, partition) -> next offset (the ``checkpoints`` table)
        self.offsets: dict[tuple[str, int], int] = {}
        #: held by a transaction and by the read side's queries: readers on other threads
        #: (a client waiting for its outcome) see committed tables only
        self.lock = threading.RLock()
        #: notified when an outermost transaction commits (Postgres's NOTIFY on checkpoints)
        self.commits = threading.Condition(self.lock)
        self._depth = 0

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return (
            self.objects,
            self.uploads,
            self.outcomes,
            self.versions,
            self.acl_entries,
            self.blobs,
            self.offsets,
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Keep the block's changes, or none of them when it raises (nested: per level).
        Values are immutable, so a shallow copy of each table is the snapshot."""
        with self.lock:
            saved = [dict(t) for t in self._tables()]
            self._depth += 1
            try:
                yield
            except BaseException:
                for table, before in zip(self._tables(), saved, strict=True):
                    table.clear()
                    table.update(before)
                raise
            finally:
                self._depth -= 1
            if self._depth == 0:
                self.commits.notify_all()

    def begin_batch(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        return self.checkpoints(topic, partitions=partitions)

    def checkpoints(
        self, topic: str, *, lock: bool = False, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        wanted = None if partitions is None else set(partitions)
        return {
            p: offset
            for (t, p), offset in sorted(self.offsets.items())
            if t == topic and (wanted is None or p in wanted)
        }

    def load_all(
        self,
        object_ids: Iterable[str],
        upload_ids: Iterable[str],
        event_ids: Iterable[str],
        texts: TextCache | None = None,
    ) -> tuple[dict[str, ObjectState], dict[str, Upload], set[str]]:
        objects = {oid: s for oid in object_ids if (s := self.objects.get(oid)) is not None}
        uploads = {uid: u for uid in upload_ids if (u := self.uploads.get(uid)) is not None}
        return objects, uploads, {e for e in event_ids if e in self.outcomes}

    def write(self, batch: BatchWrite) -> None:
        """Store a folded batch and its checkpoints; call it inside :meth:`transaction`
        (a refused row leaves the rows before it written until the block rolls back)."""
        for o in batch.outcomes:
            if o.event_id in self.outcomes:
                raise UniqueViolation(f"event_outcomes: event_id {o.event_id} exists")
            self.outcomes[o.event_id] = o
        for v in batch.versions:
            if (v.object_id, v.version) in self.versions:
                raise UniqueViolation(f"object_versions: {v.object_id} v{v.version} exists")
            self.versions[(v.object_id, v.version)] = v
        self.objects.update(batch.objects)
        for oid in batch.acl_changed:
            acl = batch.objects[oid].acl
            entries = frozenset((p, perm) for p, perms in acl.items() for perm in perms)
            if entries:
                self.acl_entries[oid] = entries
            else:
                self.acl_entries.pop(oid, None)
        self.uploads.update(batch.uploads)
        rows: dict[str, BlobRow] = {}
        merge_blob_rows(rows, blob_rows(batch))
        for sha, r in rows.items():
            self._store_blob(sha, r)
        self.offsets.update(batch.checkpoints)

    def _store_blob(self, sha: str, r: BlobRow) -> None:
        """What the Postgres upsert does: a row with a key is inserted or adds its count
        (earliest first_stored_at wins); a bare count change updates an existing row only."""
        old = self.blobs.get(sha)
        if r.key is not None:
            if old is None:
                self.blobs[sha] = StoredBlob(r.size, r.key, r.ref_delta, r.first_stored_at)
                return
            first = old.first_stored_at
            if r.first_stored_at is not None:
                first = r.first_stored_at if first is None else min(first, r.first_stored_at)
            self.blobs[sha] = StoredBlob(old.size, old.key, old.ref_count + r.ref_delta, first)
        elif r.ref_delta and old is not None:
            self.blobs[sha] = StoredBlob(
                old.size, old.key, old.ref_count + r.ref_delta, old.first_stored_at
            )

    def committed(self) -> None:
        """Nothing to learn: the dicts already hold the batch."""

    def rolled_back(self) -> None:
        """Nothing to forget: :meth:`transaction` put the dicts back."""

    @property
    def broken(self) -> bool:
        """Dicts do not lose their connection."""
        return False

    def close(self) -> None:
        """Nothing to release: the tables stay readable for the test that owns them."""

    def memo_reset(self) -> None:
        """Nothing to drop: there is no memo."""


# --- the read side ------------------------------------------------------------------------------
#: Postgres's uuid input: 32 hex digits, a hyphen allowed after any group of four, braces
#: around all or nothing
_UUID_TEXT = re.compile(r"(\{)?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}(?(1)\})")
_NIL_UUID = "00000000-0000-0000-0000-000000000000"


def _uuid(value: str) -> str:
    """The canonical text of a uuid parameter, refused as Postgres refuses it."""
    if _UUID_TEXT.fullmatch(value) is None:
        raise PermanentError(f'postgres: invalid input syntax for type uuid: "{value}"')
    return str(uuid.UUID(value))


def _text(*values: str | None) -> None:
    """Refuse text parameters that psycopg refuses to send."""
    if any(v is not None and "\x00" in v for v in values):
        raise PermanentError("postgres: PostgreSQL text fields cannot contain NUL (0x00) bytes")


def _limit(limit: int) -> int:
    if limit < 0:
        raise PermanentError("postgres: LIMIT must not be negative")
    return limit


def _jsonb_number(token: str) -> int | float:
    """A JSON number as jsonb gives it back: stored as ``numeric`` and printed without an
    exponent, so a float token with no digits left after the point (``1e300``, ``1.5e1``)
    reads back as an int (and a large one is not equal to the float it was)."""
    mantissa, _, exponent = token.lower().partition("e")
    if len(mantissa.partition(".")[2]) - int(exponent or 0) <= 0:
        return int(Decimal(token))
    return float(token)


def _jsonb(value: Any) -> Any:
    """``value`` as the read model stores it (the writer's JSON text) and psycopg loads it."""
    return json.loads(dumps(value), parse_float=_jsonb_number)


def _acl(acl: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    return {p: sorted(perms) for p, perms in acl.items()}


def _state_row(s: ObjectState) -> dict[str, Any]:
    """The columns an ``objects`` row and a version snapshot share, typed as psycopg
    returns them, for :func:`~blobledger.projectors.queries._view`."""
    b = s.blob
    return {
        "object_id": s.object_id,
        "key": s.key,
        "metadata": _jsonb(s.metadata),
        "tags": list(s.tags),
        "content_type": s.content_type,
        "deleted": s.deleted,
        "acl": _acl(s.acl),
        "blob_sha256": b.sha256 if b else None,
        "blob_size": b.size if b else None,
        "blob_key": b.key if b else None,
        "blob_upload_id": b.upload_id if b else None,
        "pending_upload_id": s.pending_upload_id,
    }


def _object_view(s: ObjectState) -> ObjectView:
    """An ``objects`` row's view (with its times, which version snapshots lack)."""
    row = _state_row(s)
    row["created_at"] = us_to_datetime(s.created_at)
    row["updated_at"] = us_to_datetime(s.updated_at)
    return _view(row, s.tenant, s.version)


class InMemoryQueries:
    """The read API over an :class:`InMemoryReadModel`'s tables for one tenant (implements
    :class:`blobledger.schemas.ports.ObjectQueries`), with the semantics of the Postgres
    :class:`~blobledger.projectors.queries.Queries`: the same views, filters, order,
    cursors, errors, and the values jsonb hands back."""

    def __init__(self, model: InMemoryReadModel, tenant: str = "default") -> None:
        self.model = model
        self.tenant = tenant

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""

    def _object(self, object_id: str) -> ObjectState | None:
        _text(self.tenant)
        s = self.model.objects.get(_uuid(object_id))
        return s if s is not None and s.tenant == self.tenant else None

    # --- point lookups ----------------------------------------------------------------------
    def get(self, object_id: str, *, actor: str, include_deleted: bool = False) -> ObjectView:
        with self.model.lock:
            s = self._object(object_id)
            deletion = self.model.versions.get((_uuid(object_id), s.version)) if s else None
        if s is None:
            raise NotFoundError(f"object {object_id} not found (or not yet projected)")
        readable = may(s.acl, actor, "read")
        if s.deleted and not include_deleted:
            if not readable:
                raise ObjectDeletedError(f"object {s.object_id} was deleted")
            if deletion is None:
                raise ObjectDeletedError(f"object {s.key!r} was deleted (version {s.version})")
            raise ObjectDeletedError.of(
                repr(s.key),
                version=s.version,
                actor=deletion.actor,
                at=us_to_datetime(deletion.occurred_at),
            )
        if not readable:
            raise AuthorizationError(f"{actor} may not read object {object_id}")
        return _object_view(s)

    def acl_of(self, object_id: str) -> tuple[dict[str, list[str]], int, bool] | None:
        """(acl, version, deleted) without a permission check: the client's pre-flight."""
        with self.model.lock:
            s = self._object(object_id)
        return (_acl(s.acl), s.version, s.deleted) if s is not None else None

    def as_of(
        self, object_id: str, *, actor: str, version: int | None = None, at: datetime | None = None
    ) -> HistoryEntry:
        """The object's state at a version, or the last version at or before a time."""
        view = self.get(object_id, actor=actor, include_deleted=True)  # existence + permission
        oid = _uuid(object_id)
        with self.model.lock:
            if version is not None:
                row = self.model.versions.get((oid, version))
            elif at is not None:
                until = datetime_to_us(at)
                row = max(
                    (
                        v
                        for (o, _), v in self.model.versions.items()
                        if o == oid and v.occurred_at <= until
                    ),
                    key=lambda v: v.version,
                    default=None,
                )
            else:
                raise ValidationError("as_of needs a version or a time")
        if row is None:
            which = version if version is not None else "at " + str(at)
            raise NotFoundError(
                f"object {view.key!r} has no version {which} (it is at version {view.version})"
            )
        return self._entry(row)

    def _entry(self, v: VersionRow) -> HistoryEntry:
        return HistoryEntry(
            version=v.version,
            event_id=v.event_id,
            event_type=v.event_type,
            actor=v.actor,
            occurred_at=us_to_datetime(v.occurred_at),
            correlation_id=v.correlation_id,
            snapshot=_view(_state_row(v.state), self.tenant, v.version),
        )

    def history(
        self, object_id: str, *, actor: str, after_version: int = 0, limit: int = 1000
    ) -> list[HistoryEntry]:
        self.get(object_id, actor=actor, include_deleted=True)
        oid = _uuid(object_id)
        with self.model.lock:
            rows = sorted(
                (v for (o, n), v in self.model.versions.items() if o == oid and n > after_version),
                key=lambda v: v.version,
            )
        return [self._entry(v) for v in rows[: _limit(limit)]]

    # --- lists --------------------------------------------------------------------------------
    def list_objects(
        self,
        *,
        actor: str,
        prefix: str = "",
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Objects the actor may read, ordered by key (code points: the C collation) and
        id, a page at a time."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        after_key, after_id = _decode_cursor(cursor) if cursor else ("", _NIL_UUID)
        _text(self.tenant, after_key)
        after = (after_key, _uuid(after_id))
        _text(prefix or None, tag or None)
        everything = actor.startswith(SYSTEM_PREFIX)
        if not everything:
            _text(actor)
        granting = {(p, perm) for p in (actor, "*") for perm in IMPLIED["read"]}
        with self.model.lock:
            rows = sorted(
                (
                    s
                    for s in self.model.objects.values()
                    if s.tenant == self.tenant
                    and not s.deleted
                    and (s.key, s.object_id) > after
                    and (not prefix or prefix <= s.key < prefix + "\U0010ffff")
                    and (not tag or tag in s.tags)
                    and (
                        everything
                        or not granting.isdisjoint(self.model.acl_entries.get(s.object_id, ()))
                    )
                ),
                key=lambda s: (s.key, s.object_id),
            )[: limit + 1]
        items = [_object_view(s) for s in rows[:limit]]
        nxt = _encode_cursor(items[-1].key, items[-1].object_id) if len(rows) > limit else None
        return Page(items, nxt)

    def audit(
        self,
        subject: str,
        *,
        actor: str,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Everything ``subject`` did (accepted and rejected), oldest first, as far as
        ``actor`` may see it: all of it to ``subject`` and ``system:`` actors, else only
        events on objects of this tenant that ``actor`` administers now."""
        _text(subject, self.tenant)
        start = None if since is None else datetime_to_us(since)
        everything = actor == subject or actor.startswith(SYSTEM_PREFIX)
        if not everything:
            _text(actor)  # Postgres gets it as a parameter only in this case
        admin = {(p, perm) for p in (actor, EVERYONE) for perm in IMPLIED["admin"]}
        with self.model.lock:
            rows = sorted(
                (
                    o
                    for o in self.model.outcomes.values()
                    if o.actor == subject
                    and o.tenant == self.tenant
                    and (start is None or o.occurred_at >= start)
                    and (everything or self._holds(o.object_id, admin))
                ),
                key=lambda o: (o.occurred_at, o.event_id),
            )
        return [
            AuditEntry(
                o.event_id,
                o.object_id,
                o.event_type,
                o.status,
                o.reason,
                o.version,
                us_to_datetime(o.occurred_at),
                o.correlation_id,
            )
            for o in rows[: _limit(limit)]
        ]

    def _holds(self, object_id: str, entries: set[tuple[str, str]]) -> bool:
        """Whether this tenant's object ``object_id`` has one of the (principal, permission)
        ``entries`` (the ``acl_entries`` join); the caller holds the lock."""
        s = self.model.objects.get(object_id)
        return (
            s is not None
            and s.tenant == self.tenant
            and not entries.isdisjoint(self.model.acl_entries.get(object_id, ()))
        )

    def upload(self, upload_id: str, *, actor: str) -> UploadView:
        """An upload, to an actor who may read its object in this tenant; anyone else gets
        the NotFoundError of an unknown id (see the Postgres ``Queries.upload`` for why)."""
        _text(self.tenant)
        with self.model.lock:
            u = self.model.uploads.get(_uuid(upload_id))
            s = self.model.objects.get(u.object_id) if u is not None else None
        if u is None or s is None or s.tenant != self.tenant or not may(s.acl, actor, "read"):
            raise NotFoundError(f"upload {upload_id} not found (or not yet projected)")
        return UploadView(
            u.upload_id,
            u.object_id,
            u.state.value,
            u.source,
            u.requested_version,
            u.sha256,
            u.size,
            u.key,
            u.dedup,
            u.reason,
            us_to_datetime(u.deadline),
        )


class InMemoryOutcomes:
    """Read-your-writes over an :class:`InMemoryReadModel` (implements
    :class:`blobledger.schemas.ports.OutcomeSource`), as
    :class:`~blobledger.projectors.waiter.OutcomeWaiter` does over Postgres: a wait ends
    when the model's checkpoint passes the receipt (woken by each commit instead of a
    NOTIFY), with the same outcome, timeout and errors."""

    def __init__(self, model: InMemoryReadModel, settings: Settings) -> None:
        self.model = model
        self.settings = settings

    def wait(self, receipt: Receipt, timeout: float | None = None) -> EventOutcome:
        timeout = timeout or self.settings.wait_timeout_seconds
        deadline = time.monotonic() + timeout
        model = self.model
        with model.commits:
            while model.checkpoints(receipt.topic).get(receipt.partition, 0) <= receipt.offset:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutExpired(
                        f"the projection did not reach {receipt.topic}[{receipt.partition}]"
                        f"@{receipt.offset} within {timeout:.0f}s; the event is in the log and "
                        "will be applied when a projector runs (`blobledger projector`); check "
                        "`blobledger stack status`"
                    )
                model.commits.wait(left)
            row = model.outcomes.get(receipt.event_id)
        if row is None:
            # folded past it without an outcome: a duplicate publish or a dead letter
            raise TransientError(
                f"event {receipt.event_id} was passed by the projection without an outcome; "
                "see `blobledger dlq list`"
            )
        return EventOutcome(row.event_id, row.object_id, row.status, row.reason, row.version)

    def close(self) -> None:
        """Nothing to stop: waits run on the caller's thread."""
