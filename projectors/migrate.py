"""Schema migrations of the read model: the numbered SQL files in projectors/migrations/.

A schema records what it has applied in ``schema_migrations``; :func:`migrate` applies
the rest in number order. A replay migrates its private rebuild schema the same way.
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from blobledger.infra.postgres import translated
from blobledger.projectors.readmodel import lock_key

MIGRATIONS_PACKAGE = "blobledger.projectors.migrations"


def migration_files() -> list[tuple[int, str, str]]:
    """(number, file name, SQL text) of every migration, in number order."""
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
                "(number integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        done = {
            row[0]
            for row in conn.execute(
                sql.SQL("SELECT number FROM {}.schema_migrations").format(ident)
            )
        }
        for number, name, text in migration_files():
            if number in done:
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(text.encode())
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (number, name) VALUES (%s, %s)").format(
                    ident
                ),
                (number, name),
            )
            applied.append(name)
    return applied
