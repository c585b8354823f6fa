"""The Postgres read model: loading fold states and writing a folded batch.

One :class:`ReadModel` wraps one connection and one schema. ``write`` puts the view rows
and the tracking records (checkpoints) in the caller's transaction, so a crash anywhere
loses nothing and applies nothing twice. Rows go in with COPY (append-only tables) or
COPY into a temp table + one upsert (mutable tables): a handful of round trips per batch.
Line formatting lives in projectors/copytext.py, schema migrations in projectors/migrate.py;
the in-memory twin of this class is projectors/memory.py (both implement projectors/ports.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql

from blobledger.infra.postgres import translated
from blobledger.projectors.copytext import (
    ACL_COLUMNS,
    OBJECT_COLUMNS,
    OBJECT_COPY_COLUMNS,
    OUTCOME_COLUMNS,
    UPLOAD_COLUMNS,
    UPLOAD_COPY_COLUMNS,
    VERSION_COLUMNS,
    TextCache,
    acl_line,
    loads,
    object_line,
    outcome_line,
    upload_line,
    version_line,
)
from blobledger.projectors.fold import BlobRef, ObjectState, Upload
from blobledger.projectors.rows import BatchWrite, BlobRow, blob_rows, merge_blob_rows
from blobledger.schemas.events import us_to_datetime
from blobledger.schemas.lifecycle import UploadState


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema announces new checkpoints; waiters for
    read-your-writes sleep on it instead of polling."""
    return f"{schema}_checkpoints"


def lock_key(schema: str) -> int:
    """Advisory-lock key of a read-model schema: projectors take it shared per batch, a
    replay's swap takes it exclusive, so a swap never lands in the middle of a batch."""
    return zlib.crc32(f"blobledger:{schema}".encode()) & 0x7FFFFFFF


#: SELECT lists that load fold states without json/uuid/datetime conversions in the driver
_OBJECT_SELECT = (
    "object_id::text, tenant, key, version, metadata::text, tags, content_type, deleted, "
    "acl::text, blob_sha256, blob_size, blob_key, blob_upload_id::text, pending_upload_id::text, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint"
)
_UPLOAD_SELECT = (
    "upload_id::text, object_id::text, state, source, requested_version, "
    "(extract(epoch FROM requested_at) * 1000000)::bigint, "
    "(extract(epoch FROM deadline) * 1000000)::bigint, "
    "declared_sha256, declared_size, sha256, size, key, dedup, reason, "
    "(extract(epoch FROM finished_at) * 1000000)::bigint"
)
_OBJECTS_BY_ID = f"SELECT {_OBJECT_SELECT} FROM {{s}}.objects WHERE object_id = ANY(%s::uuid[])"
_UPLOADS_BY_ID = f"SELECT {_UPLOAD_SELECT} FROM {{s}}.uploads WHERE upload_id = ANY(%s::uuid[])"
_APPLIED_BY_ID = "SELECT event_id::text FROM {s}.event_outcomes WHERE event_id = ANY(%s::uuid[])"


def state_from_row(r: Sequence[Any], texts: TextCache | None = None) -> ObjectState:
    """An :class:`ObjectState` from a ``_OBJECT_SELECT`` row (text JSON, epoch-us times)."""
    (
        object_id,
        tenant,
        key,
        version,
        metadata_text,
        tags,
        content_type,
        deleted,
        acl_text,
        bsha,
        bsize,
        bkey,
        bupload,
        pending,
        created_at,
        updated_at,
    ) = r
    metadata = loads(metadata_text)
    acl = {p: frozenset(perms) for p, perms in loads(acl_text).items()}
    tags_t = tuple(tags)
    if texts is not None:
        texts.put_json(metadata, metadata_text)
        texts.put_json(acl, acl_text)
    return ObjectState(
        object_id=object_id,
        tenant=tenant,
        key=key,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
        metadata=metadata,
        tags=tags_t,
        content_type=content_type,
        deleted=deleted,
        acl=acl,
        blob=BlobRef(bsha, bsize, bkey, bupload) if bsha else None,
        pending_upload_id=pending,
    )


def upload_from_row(r: Sequence[Any]) -> Upload:
    """An :class:`Upload` from an ``_UPLOAD_SELECT`` row."""
    (
        upload_id,
        object_id,
        state,
        source,
        requested_version,
        requested_at,
        deadline,
        dsha,
        dsize,
        sha,
        size,
        key,
        dedup,
        reason,
        finished_at,
    ) = r
    return Upload(
        upload_id=upload_id,
        object_id=object_id,
        state=UploadState(state),
        source=source,
        requested_version=requested_version,
        requested_at=requested_at,
        deadline=deadline,
        declared_sha256=dsha,
        declared_size=dsize,
        sha256=sha,
        size=size,
        key=key,
        dedup=dedup,
        reason=reason,
        finished_at=finished_at,
    )


class ReadModel:
    """Read-model access for the fold, bound to one connection and one schema
    (implements :class:`~blobledger.projectors.ports.ReadModelPort`)."""

    #: a memo larger than this is dropped (and refilled from Postgres as batches need it)
    MEMO_LIMIT = 500_000

    def __init__(
        self,
        conn: psycopg.Connection,
        schema: str,
        *,
        memo: bool = False,
        complete: bool = False,
        defer_blobs: bool = False,
    ) -> None:
        """``memo``: keep the fold states this model wrote in memory so later batches need
        not load them again. Only valid while nobody else writes the objects (the caller
        resets it on rebalance, checkpoint mismatch or a failed batch: :meth:`memo_reset`).
        ``complete``: the schema was empty when this model started and only this model
        writes it (a replay's private rebuild schema): the memo then knows everything, so
        no state or idempotency lookups go to Postgres at all; after a failed batch it
        degrades to a plain memo (lookups of what was committed).
        ``defer_blobs``: collect the blobs table's rows and reference-count deltas in
        :attr:`blob_rows` instead of writing them per batch (parallel rebuilds: workers on
        disjoint partitions can share a blob; the rows are written once, merged, at the end).

        The memo learns a batch only once its transaction has committed: the caller calls
        :meth:`committed` after the commit and :meth:`rolled_back` after a failure."""
        self.conn = conn
        self.schema = schema
        self._s = sql.Identifier(schema)
        self._temp_ready = False
        self.memo = memo or complete
        self.complete = complete
        self._objects: dict[str, ObjectState] = {}
        self._uploads: dict[str, Upload] = {}
        self._seen: set[str] = set()
        self._written: BatchWrite | None = None
        self.defer_blobs = defer_blobs
        #: sha256 -> what the committed batches taught of the blob (``defer_blobs``)
        self.blob_rows: dict[str, BlobRow] = {}

    def transaction(self) -> AbstractContextManager[psycopg.Transaction]:
        """A transaction (a savepoint when nested) on the model's connection: a batch's rows
        and its checkpoints commit together."""
        return self.conn.transaction()

    @property
    def broken(self) -> bool:
        """The connection is gone (server restart, network): open a new model."""
        return self.conn.closed or self.conn.broken

    def close(self) -> None:
        self.conn.close()

    def memo_reset(self) -> None:
        """Forget the memoized states (someone else may have written them)."""
        if self.complete:
            raise RuntimeError("a complete memo cannot be reset: abort the rebuild instead")
        self._objects.clear()
        self._uploads.clear()

    def committed(self) -> None:
        """The batch last given to :meth:`write` is committed: remember it."""
        batch, self._written = self._written, None
        if batch is not None:
            if self.memo:
                self._remember(batch)
            if self.defer_blobs:
                merge_blob_rows(self.blob_rows, blob_rows(batch))

    def rolled_back(self) -> None:
        """The batch transaction failed: forget what it taught (a complete memo becomes a
        plain one: the schema holds exactly what was committed, so lookups are right)."""
        self._written = None
        self._temp_ready = False  # staging tables created in the failed transaction are gone
        if self.complete:
            self.complete = False
            self._seen.clear()
        self.memo_reset()

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    # --- reads inside the batch transaction ------------------------------------------------
    def lock_for_batch(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (lock_key(self.schema),))

    def checkpoints(
        self, topic: str, *, lock: bool = False, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        """Stored checkpoints of ``topic`` (only ``partitions`` when given: a batch locks
        just its own rows, so projectors on other partitions are not serialized)."""
        q = "SELECT partition, next_offset FROM {s}.checkpoints WHERE topic = %s"
        params: tuple[Any, ...] = (topic,)
        if partitions is not None:
            q += " AND partition = ANY(%s::int[])"
            params = (topic, sorted(partitions))
        if lock:
            q += " ORDER BY partition FOR UPDATE"
        return dict(self.conn.execute(self._q(q), params).fetchall())

    def begin_batch(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """:meth:`lock_for_batch` and the locked :meth:`checkpoints` of ``partitions`` in
        one round trip (pipeline mode)."""
        parts = sorted(partitions)
        with self.conn.pipeline():
            self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (lock_key(self.schema),))
            cur = self.conn.execute(
                self._q(
                    "SELECT partition, next_offset FROM {s}.checkpoints WHERE topic = %s "
                    "AND partition = ANY(%s::int[]) ORDER BY partition FOR UPDATE"
                ),
                (topic, parts),
            )
        return dict(cur.fetchall())

    def load_all(
        self,
        object_ids: Iterable[str],
        upload_ids: Iterable[str],
        event_ids: Iterable[str],
        texts: TextCache | None = None,
    ) -> tuple[dict[str, ObjectState], dict[str, Upload], set[str]]:
        """:meth:`load_objects`, :meth:`load_uploads` and :meth:`applied` with the queries
        the memo cannot answer sent together (one round trip)."""
        objects: dict[str, ObjectState] = {}
        uploads: dict[str, Upload] = {}
        if self.memo:
            miss_o, miss_u = [], []
            for oid in object_ids:
                hit = self._objects.get(oid)
                if hit is not None:
                    objects[oid] = hit
                elif not self.complete:
                    miss_o.append(oid)
            for uid in upload_ids:
                hitu = self._uploads.get(uid)
                if hitu is not None:
                    uploads[uid] = hitu
                elif not self.complete:
                    miss_u.append(uid)
        else:
            miss_o, miss_u = list(object_ids), list(upload_ids)
        if self.complete:
            return objects, uploads, self._seen.intersection(event_ids)
        ev = list(event_ids)
        c_o = c_u = c_e = None
        with self.conn.pipeline():
            if miss_o:
                c_o = self.conn.execute(self._q(_OBJECTS_BY_ID), (miss_o,))
            if miss_u:
                c_u = self.conn.execute(self._q(_UPLOADS_BY_ID), (miss_u,))
            if ev:
                c_e = self.conn.execute(self._q(_APPLIED_BY_ID), (ev,))
        if c_o is not None:
            for r in c_o.fetchall():
                objects[r[0]] = state_from_row(r, texts)
        if c_u is not None:
            for r in c_u.fetchall():
                uploads[r[0]] = upload_from_row(r)
        seen = {r[0] for r in c_e.fetchall()} if c_e is not None else set()
        return objects, uploads, seen

    def load_objects(
        self, object_ids: Iterable[str], texts: TextCache | None = None
    ) -> dict[str, ObjectState]:
        out: dict[str, ObjectState] = {}
        if self.memo:
            memo, ids = self._objects, []
            for oid in object_ids:
                hit = memo.get(oid)
                if hit is not None:
                    out[oid] = hit
                elif not self.complete:
                    ids.append(oid)
        else:
            ids = list(object_ids)
        if not ids:
            return out
        rows = self.conn.execute(self._q(_OBJECTS_BY_ID), (ids,)).fetchall()
        for r in rows:
            out[r[0]] = state_from_row(r, texts)
        return out

    def load_uploads(self, upload_ids: Iterable[str]) -> dict[str, Upload]:
        out: dict[str, Upload] = {}
        if self.memo:
            memo, ids = self._uploads, []
            for uid in upload_ids:
                hit = memo.get(uid)
                if hit is not None:
                    out[uid] = hit
                elif not self.complete:
                    ids.append(uid)
        else:
            ids = list(upload_ids)
        if not ids:
            return out
        rows = self.conn.execute(self._q(_UPLOADS_BY_ID), (ids,)).fetchall()
        for r in rows:
            out[r[0]] = upload_from_row(r)
        return out

    def applied(self, event_ids: Iterable[str]) -> set[str]:
        if self.complete:
            return self._seen.intersection(event_ids)
        ids = list(event_ids)
        if not ids:
            return set()
        rows = self.conn.execute(self._q(_APPLIED_BY_ID), (ids,)).fetchall()
        return {r[0] for r in rows}

    # --- the write -------------------------------------------------------------------------
    def _copy_text(
        self, table: str, columns: Sequence[str], lines: Iterable[str], *, temp: bool = False
    ) -> None:
        """COPY pre-formatted text lines, written in large buffers (not row by row)."""
        target = (
            sql.Identifier(table)
            if temp
            else sql.SQL("{}.{}").format(self._s, sql.Identifier(table))
        )
        stmt = sql.SQL("COPY {t} ({c}) FROM STDIN").format(
            t=target, c=sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.conn.cursor().copy(stmt) as copy:
            buf: list[str] = []
            for line in lines:
                buf.append(line)
                if len(buf) >= 4096:
                    copy.write("".join(buf))
                    buf.clear()
            if buf:
                copy.write("".join(buf))

    def _ensure_temp(self) -> None:
        if self._temp_ready:
            return
        for table in ("objects", "uploads"):
            self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {t} (LIKE {s}.{src} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
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
                "INSERT INTO {s}.{t} ({cols}) SELECT {cols} FROM {stg} "
                "ON CONFLICT ({k}) DO UPDATE SET {u}"
            ).format(
                s=self._s,
                t=sql.Identifier(table),
                cols=cols,
                stg=sql.Identifier(f"staging_{table}"),
                k=sql.Identifier(key),
                u=updates,
            )
        )

    def write(self, batch: BatchWrite) -> None:
        """Write a folded batch and its checkpoints (inside the caller's transaction)."""
        texts = batch.texts
        with translated():
            if batch.outcomes:
                self._copy_text(
                    "event_outcomes", OUTCOME_COLUMNS, map(outcome_line, batch.outcomes)
                )
            if batch.versions:
                self._copy_text(
                    "object_versions",
                    VERSION_COLUMNS,
                    (version_line(v, texts) for v in batch.versions),
                )
            if batch.objects or batch.uploads:
                self._ensure_temp()
            if batch.objects:
                self._copy_text(
                    "staging_objects",
                    OBJECT_COPY_COLUMNS,
                    (object_line(s, texts) for s in batch.objects.values()),
                    temp=True,
                )
                self._upsert_from_staging("objects", "object_id", OBJECT_COLUMNS)
            if batch.acl_changed:
                self._write_acl_entries(batch)
            if batch.uploads:
                self._copy_text(
                    "staging_uploads",
                    UPLOAD_COPY_COLUMNS,
                    map(upload_line, batch.uploads.values()),
                    temp=True,
                )
                self._upsert_from_staging("uploads", "upload_id", UPLOAD_COLUMNS)
                if not self.defer_blobs:
                    self._write_blobs(batch)
            if batch.checkpoints:
                items = sorted(batch.checkpoints.items())
                with self.conn.pipeline():  # checkpoints and the notification: one round trip
                    self.conn.execute(
                        self._q(
                            "INSERT INTO {s}.checkpoints "
                            "(topic, partition, next_offset, updated_at) "
                            "SELECT t, p, o, now() "
                            "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o) "
                            "ON CONFLICT (topic, partition) "
                            "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                        ),
                        (
                            [t for (t, _), _ in items],
                            [p for (_, p), _ in items],
                            [o for _, o in items],
                        ),
                    )
                    # delivered at commit, so a woken waiter always finds the rows it waits for
                    self.conn.execute("SELECT pg_notify(%s, '')", (notify_channel(self.schema),))
        self._written = batch

    def _remember(self, batch: BatchWrite) -> None:
        if not self.complete and len(self._objects) + len(batch.objects) > self.MEMO_LIMIT:
            self.memo_reset()
        self._objects.update(batch.objects)
        self._uploads.update(batch.uploads)
        if self.complete:
            self._seen.update(r.event_id for r in batch.outcomes)

    def _write_acl_entries(self, batch: BatchWrite) -> None:
        ids = sorted(batch.acl_changed)
        self.conn.execute(
            self._q("DELETE FROM {s}.acl_entries WHERE object_id = ANY(%s::uuid[])"), (ids,)
        )
        rows = [
            (oid, principal, perm)
            for oid in ids
            for principal, perms in sorted(batch.objects[oid].acl.items())
            for perm in sorted(perms)
        ]
        self._copy_text("acl_entries", ACL_COLUMNS, (acl_line(o, p, m) for o, p, m in rows))

    def _write_blobs(self, batch: BatchWrite) -> None:
        """Blobs known to be stored (stored or orphaned uploads) and their ref counts."""
        rows: dict[str, BlobRow] = {}
        merge_blob_rows(rows, blob_rows(batch))
        self.write_blob_rows(rows)

    _BLOB_UPSERT = (
        "INSERT INTO {s}.blobs (sha256, size, key, ref_count, first_stored_at) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sha256) "
        "DO UPDATE SET ref_count = {s}.blobs.ref_count + EXCLUDED.ref_count, "
        "first_stored_at = LEAST({s}.blobs.first_stored_at, EXCLUDED.first_stored_at)"
    )

    def write_blob_rows(self, rows: Mapping[str, BlobRow]) -> None:
        """Apply merged blob rows (:func:`~blobledger.projectors.rows.merge_blob_rows`):
        upserts for blobs with a known size and key, plain ref-count updates for the rest,
        all in sha256 order in one pipeline, so two transactions sharing blobs lock them in
        the same order (no deadlock). The earliest first_stored_at wins whatever order
        partitions are folded in."""
        if not rows:
            return
        upsert = self._q(self._BLOB_UPSERT)
        update = self._q("UPDATE {s}.blobs SET ref_count = ref_count + %s WHERE sha256 = %s")
        with self.conn.pipeline(), self.conn.cursor() as cur:
            for sha in sorted(rows):
                r = rows[sha]
                if r.key is not None:
                    # set together with the key (both come from a stored upload)
                    first = us_to_datetime(r.first_stored_at)  # type: ignore[arg-type]
                    cur.execute(upsert, (sha, r.size, r.key, r.ref_delta, first))
                elif r.ref_delta:
                    cur.execute(update, (r.ref_delta, sha))
