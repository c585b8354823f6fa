"""Postgres connection factories (psycopg 3) with driver errors translated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from blobledger.infra.settings import Settings
from blobledger.schemas.errors import PermanentError, TransientError

#: SQLSTATE classes worth retrying: connection exceptions, serialization/deadlock,
#: insufficient resources, operator intervention (admin shutdown, crash recovery)
_TRANSIENT_CLASSES = ("08", "40", "53", "57")


def translate(e: psycopg.Error) -> TransientError | PermanentError:
    state = getattr(e, "sqlstate", None) or ""
    if isinstance(e, psycopg.OperationalError) or state[:2] in _TRANSIENT_CLASSES:
        return TransientError(f"postgres: {e} (is the database up? retrying may help)")
    return PermanentError(f"postgres: {e}")


def connect(
    settings: Settings,
    *,
    autocommit: bool = False,
    dsn: str | None = None,
    synchronous_commit: bool = True,
) -> psycopg.Connection:
    """A connection; ``synchronous_commit=False`` for writers whose every commit can be
    redone from the log (projections): see ``Settings.projector_synchronous_commit``."""
    try:
        conn = psycopg.connect(dsn or settings.dsn, autocommit=autocommit, connect_timeout=10)
        if not synchronous_commit:
            conn.execute("SET synchronous_commit = off")
            if not autocommit:
                conn.commit()
        return conn
    except psycopg.Error as e:
        raise translate(e) from e


def make_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    """A pool that is opened by the caller (``open=False``) so construction never blocks."""
    return ConnectionPool(
        settings.dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "connect_timeout": 10},
        name="blobledger",
    )


@contextmanager
def translated() -> Iterator[None]:
    """Run a block of driver calls and re-raise driver errors as project errors."""
    try:
        yield
    except psycopg.Error as e:
        raise translate(e) from e
