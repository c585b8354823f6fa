"""The Postgres read model: migrations, loading fold states, and writing a folded batch.

One :class:`ReadModel` wraps one connection and one schema. ``write`` puts the view rows
and the tracking records (checkpoints) in the caller's transaction, so a crash anywhere
loses nothing and applies nothing twice. Rows go in with COPY (append-only tables) or
COPY into a temp table + one upsert (mutable tables): a handful of round trips per batch.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import psycopg
from psycopg import sql

from blob_worker.lifecycle import UploadState
from infra.postgres import translated
from projectors.fold import BlobRef, ObjectState, Upload
from schemas.events import us_to_datetime

MIGRATIONS_PACKAGE = "projectors.migrations"

OBJECT_COLUMNS = (
    "object_id", "tenant", "key", "version", "metadata", "tags", "content_type", "deleted",
    "acl", "blob_sha256", "blob_size", "blob_key", "blob_upload_id", "pending_upload_id",
    "created_at", "updated_at",
)
VERSION_COLUMNS = (
    "object_id", "version", "event_id", "event_type", "actor", "occurred_at", "correlation_id",
    "key", "metadata", "tags", "content_type", "deleted", "acl", "blob_sha256", "blob_size",
    "blob_key", "blob_upload_id", "pending_upload_id",
)
OUTCOME_COLUMNS = (
    "event_id", "object_id", "event_type", "tenant", "actor", "status", "reason", "version",
    "correlation_id", "occurred_at", "log_partition", "log_offset",
)
UPLOAD_COLUMNS = (
    "upload_id", "object_id", "state", "source", "requested_version", "requested_at", "deadline",
    "declared_sha256", "declared_size", "sha256", "size", "key", "dedup", "reason", "finished_at",
)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema announces new checkpoints; waiters for
    read-your-writes sleep on it instead of polling."""
    return f"{schema}_checkpoints"


def lock_key(schema: str) -> int:
    """Advisory-lock key of a read-model schema: projectors take it shared per batch, a
    replay's swap takes it exclusive, so a swap never lands in the middle of a batch."""
    return zlib.crc32(f"blobledger:{schema}".encode()) & 0x7FFFFFFF


# --- migrations -------------------------------------------------------------------------------
def migration_files() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            out.append((number, entry.name, entry.read_text()))
    return sorted(out)


def migrate(conn: psycopg.Connection, schema: str) -> list[str]:
    """Create ``schema`` and apply the numbered migrations it lacks; returns the applied
    names. Serialized by an advisory lock so concurrent projectors don't race."""
    applied: list[str] = []
    ident = sql.Identifier(schema)
    with translated(), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema) ^ 0x5A5A,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
                "(number integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        done = {
            row[0]
            for row in conn.execute(sql.SQL("SELECT number FROM {}.schema_migrations").format(ident))
        }
        for number, name, text in migration_files():
            if number in done:
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(text.encode())
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (number, name) VALUES (%s, %s)").format(ident),
                (number, name),
            )
            applied.append(name)
    return applied


# --- row conversion ---------------------------------------------------------------------------
def _acl_json(acl: Mapping[str, frozenset[str]]) -> str:
    return json.dumps({p: sorted(perms) for p, perms in sorted(acl.items())}, separators=(",", ":"))


def _state_columns(s: ObjectState) -> tuple[Any, ...]:
    b = s.blob
    return (
        s.key,
        json.dumps(s.metadata, separators=(",", ":"), sort_keys=True),
        list(s.tags),
        s.content_type,
        s.deleted,
        _acl_json(s.acl),
        b.sha256 if b else None,
        b.size if b else None,
        b.key if b else None,
        b.upload_id if b else None,
        s.pending_upload_id,
    )


def object_row(s: ObjectState) -> tuple[Any, ...]:
    c = _state_columns(s)
    return (s.object_id, s.tenant, c[0], s.version, *c[1:], us_to_datetime(s.created_at),
            us_to_datetime(s.updated_at))


def state_from_row(r: Sequence[Any]) -> ObjectState:
    (object_id, tenant, key, version, metadata, tags, content_type, deleted, acl, bsha, bsize,
     bkey, bupload, pending, created_at, updated_at) = r
    return ObjectState(
        object_id=str(object_id),
        tenant=tenant,
        key=key,
        version=version,
        created_at=int(created_at.timestamp() * 1_000_000),
        updated_at=int(updated_at.timestamp() * 1_000_000),
        metadata=metadata,
        tags=tuple(tags),
        content_type=content_type,
        deleted=deleted,
        acl={p: frozenset(perms) for p, perms in acl.items()},
        blob=BlobRef(bsha, bsize, bkey, str(bupload)) if bsha else None,
        pending_upload_id=str(pending) if pending else None,
    )


def upload_row(u: Upload) -> tuple[Any, ...]:
    return (
        u.upload_id, u.object_id, u.state.value, u.source, u.requested_version,
        us_to_datetime(u.requested_at), us_to_datetime(u.deadline), u.declared_sha256,
        u.declared_size, u.sha256, u.size, u.key, u.dedup, u.reason,
        us_to_datetime(u.finished_at) if u.finished_at is not None else None,
    )


def upload_from_row(r: Sequence[Any]) -> Upload:
    (upload_id, object_id, state, source, requested_version, requested_at, deadline, dsha, dsize,
     sha, size, key, dedup, reason, finished_at) = r
    return Upload(
        upload_id=str(upload_id), object_id=str(object_id), state=UploadState(state),
        source=source, requested_version=requested_version,
        requested_at=int(requested_at.timestamp() * 1_000_000),
        deadline=int(deadline.timestamp() * 1_000_000), declared_sha256=dsha,
        declared_size=dsize, sha256=sha, size=size, key=key, dedup=dedup, reason=reason,
        finished_at=int(finished_at.timestamp() * 1_000_000) if finished_at else None,
    )


@dataclass
class BatchWrite:
    """Everything one folded batch changes, ready to write."""

    objects: dict[str, ObjectState] = field(default_factory=dict)
    acl_changed: set[str] = field(default_factory=set)
    versions: list[tuple[Any, ...]] = field(default_factory=list)
    outcomes: list[tuple[Any, ...]] = field(default_factory=list)
    uploads: dict[str, Upload] = field(default_factory=dict)
    ref_deltas: dict[str, int] = field(default_factory=dict)
    #: (topic, partition) -> next offset
    checkpoints: dict[tuple[str, int], int] = field(default_factory=dict)

    def version_row(self, s: ObjectState, event_id: str, event_type: str, actor: str,
                    occurred_at: int, correlation_id: str) -> None:
        c = _state_columns(s)
        self.versions.append((s.object_id, s.version, event_id, event_type, actor,
                              us_to_datetime(occurred_at), correlation_id, *c))


class ReadModel:
    """Read-model access for the fold, bound to one connection and one schema."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self._s = sql.Identifier(schema)
        self._temp_ready = False

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    # --- reads inside the batch transaction ------------------------------------------------
    def lock_for_batch(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (lock_key(self.schema),))

    def checkpoints(self, topic: str, *, lock: bool = False) -> dict[int, int]:
        q = "SELECT partition, next_offset FROM {s}.checkpoints WHERE topic = %s"
        if lock:
            q += " FOR UPDATE"
        return dict(self.conn.execute(self._q(q), (topic,)).fetchall())

    def load_objects(self, object_ids: Iterable[str]) -> dict[str, ObjectState]:
        ids = list(object_ids)
        if not ids:
            return {}
        cols = sql.SQL(", ").join(map(sql.Identifier, OBJECT_COLUMNS))
        rows = self.conn.execute(
            sql.SQL("SELECT {c} FROM {s}.objects WHERE object_id = ANY(%s::uuid[])").format(c=cols, s=self._s),
            (ids,),
        ).fetchall()
        return {str(r[0]): state_from_row(r) for r in rows}

    def load_uploads(self, upload_ids: Iterable[str]) -> dict[str, Upload]:
        ids = list(upload_ids)
        if not ids:
            return {}
        cols = sql.SQL(", ").join(map(sql.Identifier, UPLOAD_COLUMNS))
        rows = self.conn.execute(
            sql.SQL("SELECT {c} FROM {s}.uploads WHERE upload_id = ANY(%s::uuid[])").format(c=cols, s=self._s),
            (ids,),
        ).fetchall()
        return {str(r[0]): upload_from_row(r) for r in rows}

    def applied(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        if not ids:
            return set()
        rows = self.conn.execute(
            self._q("SELECT event_id FROM {s}.event_outcomes WHERE event_id = ANY(%s::uuid[])"), (ids,)
        ).fetchall()
        return {str(r[0]) for r in rows}

    # --- the write -------------------------------------------------------------------------
    def _copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, temp: bool = False) -> None:
        target = sql.Identifier(table) if temp else sql.SQL("{}.{}").format(self._s, sql.Identifier(table))
        stmt = sql.SQL("COPY {t} ({c}) FROM STDIN").format(
            t=target, c=sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.conn.cursor().copy(stmt) as copy:
            for row in rows:
                copy.write_row(row)

    def _ensure_temp(self) -> None:
        if self._temp_ready:
            return
        for table in ("objects", "uploads"):
            self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {t} (LIKE {s}.{src} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                ).format(t=sql.Identifier(f"staging_{table}"), s=self._s, src=sql.Identifier(table))
            )
        self._temp_ready = True

    def _upsert_from_staging(self, table: str, key: str, columns: Sequence[str]) -> None:
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns if c != key
        )
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {s}.{t} ({cols}) SELECT {cols} FROM {stg} ON CONFLICT ({k}) DO UPDATE SET {u}"
            ).format(
                s=self._s, t=sql.Identifier(table), cols=cols, stg=sql.Identifier(f"staging_{table}"),
                k=sql.Identifier(key), u=updates,
            )
        )

    def write(self, batch: BatchWrite) -> None:
        """Write a folded batch and its checkpoints (inside the caller's transaction)."""
        with translated():
            if batch.outcomes:
                self._copy("event_outcomes", OUTCOME_COLUMNS, batch.outcomes)
            if batch.versions:
                self._copy("object_versions", VERSION_COLUMNS, batch.versions)
            if batch.objects or batch.uploads:
                self._ensure_temp()
            if batch.objects:
                self._copy("staging_objects", OBJECT_COLUMNS,
                           (object_row(s) for s in batch.objects.values()), temp=True)
                self._upsert_from_staging("objects", "object_id", OBJECT_COLUMNS)
            if batch.acl_changed:
                self._write_acl_entries(batch)
            if batch.uploads:
                self._copy("staging_uploads", UPLOAD_COLUMNS,
                           (upload_row(u) for u in batch.uploads.values()), temp=True)
                self._upsert_from_staging("uploads", "upload_id", UPLOAD_COLUMNS)
                self._write_blobs(batch)
            if batch.checkpoints:
                with self.conn.cursor() as cur:
                    cur.executemany(
                        self._q(
                            "INSERT INTO {s}.checkpoints (topic, partition, next_offset, updated_at) "
                            "VALUES (%s, %s, %s, now()) ON CONFLICT (topic, partition) "
                            "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                        ),
                        [(t, p, o) for (t, p), o in sorted(batch.checkpoints.items())],
                    )
                # delivered at commit, so a woken waiter always finds the rows it waits for
                self.conn.execute("SELECT pg_notify(%s, '')", (notify_channel(self.schema),))

    def _write_acl_entries(self, batch: BatchWrite) -> None:
        ids = sorted(batch.acl_changed)
        self.conn.execute(self._q("DELETE FROM {s}.acl_entries WHERE object_id = ANY(%s::uuid[])"), (ids,))
        rows = [
            (oid, principal, perm)
            for oid in ids
            for principal, perms in sorted(batch.objects[oid].acl.items())
            for perm in sorted(perms)
        ]
        self._copy("acl_entries", ("object_id", "principal", "permission"), rows)

    def _write_blobs(self, batch: BatchWrite) -> None:
        """Blobs known to be stored (stored or orphaned uploads) and their ref counts."""
        rows: dict[str, tuple[Any, ...]] = {}
        for u in batch.uploads.values():
            if u.sha256 and u.state in (UploadState.STORED, UploadState.ORPHANED):
                rows[u.sha256] = (u.sha256, u.size, u.key, 0, us_to_datetime(u.finished_at or u.requested_at))
        for sha, delta in batch.ref_deltas.items():
            if sha in rows:
                r = rows[sha]
                rows[sha] = (r[0], r[1], r[2], delta, r[4])
        pure_deltas = [(d, sha) for sha, d in sorted(batch.ref_deltas.items()) if sha not in rows and d]
        with self.conn.cursor() as cur:
            if rows:
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.blobs (sha256, size, key, ref_count, first_stored_at) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sha256) "
                        "DO UPDATE SET ref_count = {s}.blobs.ref_count + EXCLUDED.ref_count"
                    ),
                    [rows[k] for k in sorted(rows)],
                )
            if pure_deltas:
                cur.executemany(
                    self._q("UPDATE {s}.blobs SET ref_count = ref_count + %s WHERE sha256 = %s"),
                    pure_deltas,
                )
