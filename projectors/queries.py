"""Queries over the read model, filtered by what the actor may read.

Every query is an index lookup or an index range scan (objects by id, by (tenant, key),
by tag; versions by (object_id, version); outcomes by (actor, time)), so latency does not
grow with the length of the log. Lists page with keyset cursors, never OFFSET.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from blobledger.infra.postgres import translated
from blobledger.schemas.errors import (
    AuthorizationError,
    NotFoundError,
    ObjectDeletedError,
    ValidationError,
)
from blobledger.schemas.permissions import EVERYONE, IMPLIED, SYSTEM_PREFIX, may
from blobledger.schemas.views import (
    AuditEntry,
    BlobInfo,
    HistoryEntry,
    ObjectView,
    Page,
    UploadView,
)

_SNAPSHOT_COLUMNS = (
    "object_id, key, metadata, tags, content_type, deleted, acl, blob_sha256, blob_size, "
    "blob_key, blob_upload_id, pending_upload_id"
)


def _view(r: dict[str, Any], tenant: str, version: int) -> ObjectView:
    blob = (
        BlobInfo(r["blob_sha256"], r["blob_size"], r["blob_key"], str(r["blob_upload_id"]))
        if r["blob_sha256"]
        else None
    )
    return ObjectView(
        object_id=str(r["object_id"]),
        tenant=tenant,
        key=r["key"],
        version=version,
        metadata=r["metadata"],
        tags=list(r["tags"]),
        content_type=r["content_type"],
        deleted=r["deleted"],
        acl=r["acl"],
        blob=blob,
        pending_upload_id=str(r["pending_upload_id"]) if r["pending_upload_id"] else None,
        created_at=r.get("created_at"),
        updated_at=r.get("updated_at"),
    )


def _encode_cursor(key: str, object_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([key, object_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        key, oid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return str(key), str(oid)
    except (ValueError, TypeError) as e:
        raise ValidationError("invalid cursor; pass the next_cursor of a previous page") from e


class Queries:
    """Read API over a read-model schema for one tenant (implements
    :class:`blobledger.schemas.ports.ObjectQueries`).

    It connects on first use (a client that only publishes never opens a connection) and
    reconnects after the connection broke: a read model that was down for a while is
    usable again on the next call, without the caller rebuilding anything."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        schema: str,
        tenant: str = "default",
    ) -> None:
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        self.schema = schema
        self.tenant = tenant
        self._s = sql.Identifier(schema)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            with translated():
                self._conn = self._connect()
        return self._conn

    def _fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        conn = self._connection()
        with translated(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.SQL(query).format(s=self._s), params)
            return cur.fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _readable_clause(self) -> str:
        return (
            "EXISTS (SELECT 1 FROM {s}.acl_entries a WHERE a.object_id = o.object_id "
            "AND a.principal = ANY(%s) AND a.permission = ANY(%s))"
        )

    # --- point lookups ----------------------------------------------------------------------
    def get(self, object_id: str, *, actor: str, include_deleted: bool = False) -> ObjectView:
        rows = self._fetch(
            "SELECT * FROM {s}.objects o WHERE object_id = %s AND tenant = %s",
            (object_id, self.tenant),
        )
        if not rows:
            raise NotFoundError(f"object {object_id} not found (or not yet projected)")
        r = rows[0]
        readable = may(r["acl"], actor, "read")
        if r["deleted"] and not include_deleted:
            raise self._deleted(r, readable)
        if not readable:
            raise AuthorizationError(f"{actor} may not read object {object_id}")
        return _view(r, r["tenant"], r["version"])

    def _deleted(self, r: dict[str, Any], readable: bool) -> ObjectDeletedError:
        """The refusal of a deleted object: its key, and the deleting version's actor and
        time, only to those who may read it (anyone else learns what a forbidden read of
        a live object tells: that the id exists)."""
        if not readable:
            return ObjectDeletedError(f"object {r['object_id']} was deleted")
        # nothing versions a deleted object, so its current version is the deletion
        rows = self._fetch(
            "SELECT actor, occurred_at FROM {s}.object_versions "
            "WHERE object_id = %s AND version = %s",
            (r["object_id"], r["version"]),
        )
        if not rows:
            return ObjectDeletedError(f"object {r['key']!r} was deleted (version {r['version']})")
        return ObjectDeletedError.of(
            repr(r["key"]), version=r["version"], actor=rows[0]["actor"], at=rows[0]["occurred_at"]
        )

    def acl_of(self, object_id: str) -> tuple[dict[str, list[str]], int, bool] | None:
        """(acl, version, deleted) without a permission check: the client's pre-flight."""
        rows = self._fetch(
            "SELECT acl, version, deleted FROM {s}.objects WHERE object_id = %s AND tenant = %s",
            (object_id, self.tenant),
        )
        return (rows[0]["acl"], rows[0]["version"], rows[0]["deleted"]) if rows else None

    def as_of(
        self, object_id: str, *, actor: str, version: int | None = None, at: datetime | None = None
    ) -> HistoryEntry:
        """The object's state at a version, or the last version at or before a time."""
        view = self.get(object_id, actor=actor, include_deleted=True)  # existence + permission
        if version is not None:
            rows = self._fetch(
                "SELECT * FROM {s}.object_versions WHERE object_id = %s AND version = %s",
                (object_id, version),
            )
        elif at is not None:
            rows = self._fetch(
                "SELECT * FROM {s}.object_versions WHERE object_id = %s AND occurred_at <= %s "
                "ORDER BY version DESC LIMIT 1",
                (object_id, at),
            )
        else:
            raise ValidationError("as_of needs a version or a time")
        if not rows:
            which = version if version is not None else f"at {at}"
            raise NotFoundError(
                f"object {view.key!r} has no version {which} (it is at version {view.version})"
            )
        return self._entry(rows[0])

    def _entry(self, r: dict[str, Any]) -> HistoryEntry:
        return HistoryEntry(
            version=r["version"],
            event_id=str(r["event_id"]),
            event_type=r["event_type"],
            actor=r["actor"],
            occurred_at=r["occurred_at"],
            correlation_id=r["correlation_id"],
            snapshot=_view(r, self.tenant, r["version"]),
        )

    def history(
        self, object_id: str, *, actor: str, after_version: int = 0, limit: int = 1000
    ) -> list[HistoryEntry]:
        self.get(object_id, actor=actor, include_deleted=True)
        rows = self._fetch(
            "SELECT * FROM {s}.object_versions WHERE object_id = %s AND version > %s "
            "ORDER BY version LIMIT %s",
            (object_id, after_version, limit),
        )
        return [self._entry(r) for r in rows]

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
        """Objects the actor may read, ordered by key, a page at a time."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        after_key, after_id = (
            _decode_cursor(cursor) if cursor else ("", "00000000-0000-0000-0000-000000000000")
        )
        where = [
            "o.tenant = %s",
            "NOT o.deleted",
            '(o.key COLLATE "C", o.object_id) > (%s, %s::uuid)',
        ]
        params: list[Any] = [self.tenant, after_key, after_id]
        if prefix:
            # a range on the C-collated index, which LIKE with arbitrary input cannot use safely
            where.append('o.key COLLATE "C" >= %s AND o.key COLLATE "C" < %s')
            params += [prefix, prefix + "\U0010ffff"]
        if tag:
            where.append("o.tags @> ARRAY[%s]::text[]")
            params.append(tag)
        if not actor.startswith(SYSTEM_PREFIX):
            where.append(self._readable_clause())
            params += [[actor, EVERYONE], list(IMPLIED["read"])]
        params.append(limit + 1)
        rows = self._fetch(
            "SELECT o.* FROM {s}.objects o WHERE "
            + " AND ".join(where)
            + ' ORDER BY o.key COLLATE "C", o.object_id LIMIT %s',
            params,
        )
        items = [_view(r, r["tenant"], r["version"]) for r in rows[:limit]]
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
        ``actor`` may see it: all of it to ``subject`` itself and to ``system:`` actors;
        to anyone else only events on objects of this tenant that ``actor`` administers
        (now). Read permission is not enough: an audit shows who was refused what, which
        is the object admin's business."""
        where = [
            "e.actor = %s",
            "e.tenant = %s",
            "e.occurred_at >= COALESCE(%s, '-infinity'::timestamptz)",
        ]
        params: list[Any] = [subject, self.tenant, since]
        if actor != subject and not actor.startswith(SYSTEM_PREFIX):
            where.append(
                "EXISTS (SELECT 1 FROM {s}.objects o JOIN {s}.acl_entries a "
                "ON a.object_id = o.object_id WHERE o.object_id = e.object_id "
                "AND o.tenant = %s AND a.principal = ANY(%s) AND a.permission = ANY(%s))"
            )
            params += [self.tenant, [actor, EVERYONE], list(IMPLIED["admin"])]
        params.append(limit)
        rows = self._fetch(
            "SELECT e.* FROM {s}.event_outcomes e WHERE "
            + " AND ".join(where)
            + " ORDER BY e.occurred_at, e.event_id LIMIT %s",
            params,
        )
        return [
            AuditEntry(
                str(r["event_id"]),
                str(r["object_id"]),
                r["event_type"],
                r["status"],
                r["reason"],
                r["version"],
                r["occurred_at"],
                r["correlation_id"],
            )
            for r in rows
        ]

    def upload(self, upload_id: str, *, actor: str) -> UploadView:
        """An upload, to an actor who may read its object in this tenant.

        Anyone else gets the same NotFoundError as for an unknown id, never "forbidden":
        upload ids are random and handed only to whoever attached, so a forbidden answer
        would confirm that a leaked or guessed id is live (and, across tenants, that the
        other tenant exists and is busy), while telling a legitimate caller nothing."""
        rows = self._fetch(
            "SELECT u.*, o.acl AS object_acl FROM {s}.uploads u "
            "JOIN {s}.objects o ON o.object_id = u.object_id "
            "WHERE u.upload_id = %s AND o.tenant = %s",
            (upload_id, self.tenant),
        )
        if not rows or not may(rows[0]["object_acl"], actor, "read"):
            raise NotFoundError(f"upload {upload_id} not found (or not yet projected)")
        r = rows[0]
        return UploadView(
            str(r["upload_id"]),
            str(r["object_id"]),
            r["state"],
            r["source"],
            r["requested_version"],
            r["sha256"],
            r["size"],
            r["key"],
            r["dedup"],
            r["reason"],
            r["deadline"],
        )

    def outcome(self, event_id: str) -> dict[str, Any] | None:
        rows = self._fetch("SELECT * FROM {s}.event_outcomes WHERE event_id = %s", (event_id,))
        return rows[0] if rows else None

    def lag(self, high_watermarks: dict[int, int], topic: str) -> int:
        """Events in the log not yet folded (sum over partitions)."""
        rows = self._fetch(
            "SELECT partition, next_offset FROM {s}.checkpoints WHERE topic = %s", (topic,)
        )
        done = {r["partition"]: r["next_offset"] for r in rows}
        return sum(max(0, high - done.get(p, 0)) for p, high in high_watermarks.items())
