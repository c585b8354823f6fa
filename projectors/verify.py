"""Comparing two read-model schemas (``blobledger replay --verify``): table digests first,
then, for tables that differ, the primary keys that differ.

A rebuild folded from the log must equal the live model row for row; checkpoint times are
the only volatile columns.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

#: tables compared by --verify, with their primary keys (checkpoint times are volatile)
VERIFIED_TABLES: dict[str, tuple[str, ...]] = {
    "objects": ("object_id",),
    "object_versions": ("object_id", "version"),
    "event_outcomes": ("event_id",),
    "uploads": ("upload_id",),
    "blobs": ("sha256",),
    "acl_entries": ("object_id", "principal", "permission"),
    "checkpoints": ("topic", "partition"),
}
EXCLUDED_COLUMNS = {"checkpoints": ("updated_at",)}


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """The compared columns of ``schema.table``, in table order."""
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows if r[0] not in EXCLUDED_COLUMNS.get(table, ())]


def _digest(conn: psycopg.Connection, schema: str, table: str, cols: sql.Composable) -> str:
    q = sql.SQL(
        "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
        "FROM (SELECT {c} FROM {s}.{t}) t"
    ).format(c=cols, s=sql.Identifier(schema), t=sql.Identifier(table))
    row = conn.execute(q).fetchone()
    assert row is not None  # an aggregate without GROUP BY returns one row
    return str(row[0])


def _only(
    conn: psycopg.Connection,
    a: str,
    b: str,
    table: str,
    pk: sql.Composable,
    cols: sql.Composable,
    limit: int,
) -> list[str]:
    """Primary keys of rows in ``a`` that ``b`` lacks or holds with other contents."""
    q = sql.SQL(
        "SELECT {pk} FROM (SELECT {c} FROM {a}.{t} EXCEPT SELECT {c} FROM {b}.{t}) x "
        "ORDER BY 1 LIMIT %s"
    ).format(
        pk=pk,
        c=cols,
        a=sql.Identifier(a),
        b=sql.Identifier(b),
        t=sql.Identifier(table),
    )
    return ["/".join(map(str, r)) for r in conn.execute(q, (limit,)).fetchall()]


def compare(
    conn: psycopg.Connection, live: str, rebuilt: str, limit: int = 20
) -> dict[str, dict[str, list[str]]]:
    """Digest every table in both schemas; for tables that differ, list primary keys
    present only on one side or with different contents."""
    diffs: dict[str, dict[str, list[str]]] = {}
    for table, pk in VERIFIED_TABLES.items():
        cols = sql.SQL(", ").join(map(sql.Identifier, table_columns(conn, live, table)))
        pk_sql = sql.SQL(", ").join(map(sql.Identifier, pk))
        if _digest(conn, live, table, cols) == _digest(conn, rebuilt, table, cols):
            continue
        diffs[table] = {
            "live_only_or_changed": _only(conn, live, rebuilt, table, pk_sql, cols, limit),
            "rebuilt_only_or_changed": _only(conn, rebuilt, live, table, pk_sql, cols, limit),
        }
    return diffs
