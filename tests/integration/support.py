"""Helpers for integration tests: projector processes, bulk publishing, digests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from blobledger.infra.kafka import headers_for, make_producer
from blobledger.infra.keys import local_signer
from blobledger.infra.settings import Settings
from blobledger.infra.testing.services import ThreadedProjector  # noqa: F401 - re-exported for the tests
from blobledger.projectors.verify import VERIFIED_TABLES, table_columns as _columns
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import Event


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
    env.update(settings.to_env())
    env["BLOBLEDGER_LOG_JSON"] = "1"
    env.update(extra)
    return env


class Proc:
    """A blobledger subcommand running as a child process (killable with SIGKILL)."""

    def __init__(self, settings: Settings, args: Sequence[str], log_path: str) -> None:
        # the child writes to its own copy of the file descriptor
        with open(log_path, "ab") as log:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "blobledger.infra.cli", *args],
                env=child_env(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.p.returncode


@contextmanager
def projector_process(settings: Settings, log_path: str) -> Iterator[Proc]:
    proc = Proc(settings, ["projector"], log_path)
    try:
        yield proc
    finally:
        proc.stop()


def publish_all(settings: Settings, events: Sequence[Event], topic: str | None = None) -> None:
    """Bulk-publish (no waiting for outcomes): the fastest way to fill a log for a test."""
    producer = make_producer(settings)
    codec = default_codec()
    key_for = local_signer(settings)  # signed as each actor's process would sign it
    topic = topic or settings.events_topic
    for e in events:
        value = codec.encode(e)
        headers = headers_for(e, value=value, signer=key_for(e.envelope.actor))
        while True:
            try:
                producer.produce(topic, key=e.object_id.encode(), value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def checkpoint_total(settings: Settings) -> int:
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        try:
            row = conn.execute(
                sql.SQL("SELECT coalesce(sum(next_offset), 0) FROM {}.checkpoints").format(
                    sql.Identifier(settings.read_model_schema)
                )
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0])


def wait_for(
    predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def digests(settings: Settings, schema: str | None = None) -> dict[str, str]:
    """One md5 per read-model table (checkpoint times excluded): equal digests, equal tables."""
    schema = schema or settings.read_model_schema
    out = {}
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        for table in VERIFIED_TABLES:
            cols = sql.SQL(", ").join(map(sql.Identifier, _columns(conn, schema, table)))
            q = sql.SQL(
                "SELECT count(*) || ':' || "
                "md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM (SELECT {c} FROM {s}.{t}) t"
            ).format(c=cols, s=sql.Identifier(schema), t=sql.Identifier(table))
            out[table] = conn.execute(q).fetchone()[0]
    return out
