"""What ``status`` reads from the read model: checkpoints, pending and finished uploads,
and how much was folded and stored in the last minute.

Read-only queries on the projection's tables (projectors/migrations), like the reaper's.
Ages and windows are computed by the database against its own ``now()``, so a clock
skew between this host and Postgres never shows as lag. Each statement may take at most
:data:`STATEMENT_TIMEOUT_MS`: a status must answer quickly even on a huge
``event_outcomes`` (its time window has no index of its own); a window that does not
finish in time is reported as unknown (None), not waited for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from blobledger.infra.postgres import translate
from blobledger.infra.settings import Settings

STATEMENT_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    next_offset: int
    #: seconds since the projector last wrote it
    age: float


@dataclass(frozen=True)
class ReadModelStats:
    #: False: no projector has created the read model yet (every other field is empty)
    exists: bool
    checkpoints: tuple[Checkpoint, ...] = ()
    pending_uploads: int = 0
    #: seconds the oldest pending upload has waited
    oldest_pending_age: float | None = None
    past_deadline: int = 0
    #: uploads that finished in the last hour, per outcome (stored, compensated, orphaned)
    finished_last_hour: dict[str, int] = field(default_factory=dict)
    #: events folded with an occurred_at in the last minute (None: the query timed out)
    events_last_minute: int | None = None
    uploads_last_minute: int | None = None
    bytes_last_minute: int | None = None


def read_model_stats(settings: Settings, *, connect_timeout: float = 2.0) -> ReadModelStats:
    try:
        with psycopg.connect(
            settings.dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout))
        ) as conn:
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT_MS))
            )
            return _stats(conn, settings)
    except psycopg.Error as e:
        raise translate(e) from e


def _stats(conn: psycopg.Connection, settings: Settings) -> ReadModelStats:
    s = sql.Identifier(settings.read_model_schema)
    try:
        checkpoints = conn.execute(
            sql.SQL(
                "SELECT partition, next_offset, extract(epoch FROM now() - updated_at) "
                "FROM {}.checkpoints WHERE topic = %s ORDER BY partition"
            ).format(s),
            (settings.events_topic,),
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return ReadModelStats(exists=False)
    pending, oldest, late = conn.execute(
        sql.SQL(
            "SELECT count(*), extract(epoch FROM now() - min(requested_at)), "
            "count(*) FILTER (WHERE deadline < now()) FROM {}.uploads WHERE state = 'pending'"
        ).format(s)
    ).fetchone() or (0, None, 0)
    finished = _windowed(
        conn,
        sql.SQL(
            "SELECT state, count(*) FROM {}.uploads "
            "WHERE finished_at > now() - interval '1 hour' GROUP BY state"
        ).format(s),
    )
    events = _windowed(
        conn,
        sql.SQL(
            "SELECT count(*) FROM {}.event_outcomes WHERE occurred_at > now() - interval '1 minute'"
        ).format(s),
    )
    stored = _windowed(
        conn,
        sql.SQL(
            "SELECT count(*), coalesce(sum(size), 0) FROM {}.uploads "
            "WHERE state = 'stored' AND finished_at > now() - interval '1 minute'"
        ).format(s),
    )
    return ReadModelStats(
        exists=True,
        checkpoints=tuple(Checkpoint(int(p), int(o), float(a)) for p, o, a in checkpoints),
        pending_uploads=int(pending),
        oldest_pending_age=float(oldest) if oldest is not None else None,
        past_deadline=int(late),
        finished_last_hour={str(k): int(v) for k, v in finished or ()},
        events_last_minute=int(events[0][0]) if events else None,
        uploads_last_minute=int(stored[0][0]) if stored else None,
        bytes_last_minute=int(stored[0][1]) if stored else None,
    )


def _windowed(conn: psycopg.Connection, query: sql.Composed) -> list[tuple[Any, ...]] | None:
    """Rows of a time-window query, or None when it ran into the statement timeout."""
    try:
        return conn.execute(query).fetchall()
    except psycopg.errors.QueryCanceled:
        return None
