"""Read-your-writes: wait until the projection has folded a published offset.

One background thread per waiter LISTENs on the schema's checkpoint channel; every
notification (or a periodic tick, in case one is missed) it checks which pending
receipts the checkpoints have passed and resolves them with their outcome rows.

A wait not answered within :attr:`OutcomeWaiter.ASK_AFTER` asks whether a projector is
consuming at all (infra/liveness.py), and again every :attr:`OutcomeWaiter.ASK_EVERY`
seconds: with none, it ends with :class:`NotRunningError` in about a second instead of
timing out after ``wait_timeout_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import psycopg
from psycopg import sql

from blobledger.infra import logging as blog
from blobledger.infra.liveness import PROJECTOR, Liveness
from blobledger.infra.postgres import translate
from blobledger.infra.settings import Settings
from blobledger.projectors.readmodel import ReadModel, notify_channel
from blobledger.schemas.errors import NotRunningError, TimeoutExpired, TransientError
from blobledger.schemas.receipts import EventOutcome, Receipt

log = blog.get_logger(__name__)


class OutcomeWaiter:
    #: while receipts are pending, the longest a receipt whose batch was already notified
    #: waits before the checkpoints are read again
    POLL = 0.02
    #: a folding projector answers in milliseconds; a wait this long is worth a question
    ASK_AFTER = 1.0
    ASK_EVERY = 5.0

    def __init__(
        self,
        settings: Settings,
        *,
        schema: str | None = None,
        tick: float = 0.5,
        projector_check: Callable[[Receipt], None] | None = None,
    ) -> None:
        """``projector_check`` raises :class:`NotRunningError` when no projector will fold
        the receipt (default: :class:`~blobledger.infra.liveness.Liveness`)."""
        self.settings = settings
        self.schema = schema or settings.read_model_schema
        self.tick = tick
        self._liveness: Liveness | None = None
        self.projector_check = projector_check or self._projector_runs
        self._pending: dict[str, tuple[Receipt, Future[EventOutcome]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="outcome-waiter", daemon=True)
            self._thread.start()

    def expect(self, receipt: Receipt) -> Future[EventOutcome]:
        future: Future[EventOutcome] = Future()
        with self._lock:
            self._pending[receipt.event_id] = (receipt, future)
        self._ensure_thread()
        self._wake.set()
        return future

    def wait(self, receipt: Receipt, timeout: float | None = None) -> EventOutcome:
        timeout = timeout or self.settings.wait_timeout_seconds
        future = self.expect(receipt)
        deadline = time.monotonic() + timeout
        ask_at = time.monotonic() + self.ASK_AFTER
        try:
            while True:
                now = time.monotonic()
                try:
                    return future.result(max(0.0, min(deadline, ask_at) - now))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                try:
                    self.projector_check(receipt)
                except NotRunningError:
                    if future.done():  # folded while we asked (its last batch, say)
                        return future.result()
                    raise
                ask_at = time.monotonic() + self.ASK_EVERY
        except NotRunningError:
            self._forget(receipt)
            raise
        except TimeoutError as e:
            self._forget(receipt)
            raise TimeoutExpired(
                f"the projection did not reach "
                f"{receipt.topic}[{receipt.partition}]@{receipt.offset} within {timeout:.0f}s; "
                "the event is in the log and will be applied when a projector runs "
                "(`blobledger up`); check `blobledger status`"
            ) from e

    def _forget(self, receipt: Receipt) -> None:
        with self._lock:
            self._pending.pop(receipt.event_id, None)

    def _projector_runs(self, receipt: Receipt) -> None:
        if self._liveness is None:
            self._liveness = Liveness(self.settings)
        self._liveness.require(
            PROJECTOR,
            f"{receipt.topic}[{receipt.partition}]@{receipt.offset} is in the log and will "
            "be applied when one runs",
        )

    # --- the background thread ------------------------------------------------------------
    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.settings.dsn, autocommit=True, connect_timeout=10)
                    conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(self.schema)))
                    )
                self._wake.clear()
                self._resolve(conn)
                with self._lock:
                    idle = not self._pending
                if idle:
                    self._wake.wait(self.tick)
                    continue
                if self._wake.is_set():
                    continue  # receipts arrived while we resolved: look again right away
                # a receipt added while we sleep here may already be folded (its batch's
                # notification came before the broker's ack reached the publisher): wake
                # every POLL seconds too, not only on the next notification
                for _ in conn.notifies(timeout=min(self.tick, self.POLL), stop_after=1):
                    pass
            except psycopg.Error as e:
                log.warning("outcome waiter lost postgres; reconnecting", error=str(translate(e)))
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.5)
        if conn is not None:
            conn.close()

    def _resolve(self, conn: psycopg.Connection) -> None:
        with self._lock:
            pending = list(self._pending.values())
        if not pending:
            return
        topic = pending[0][0].topic
        s = sql.Identifier(self.schema)
        try:
            stored = ReadModel(conn, self.schema).checkpoints(topic)
        except psycopg.errors.UndefinedTable:
            return  # no projector has created the read model yet
        ready = [(r, f) for r, f in pending if stored.get(r.partition, 0) > r.offset]
        if not ready:
            return
        rows = conn.execute(
            sql.SQL(
                "SELECT event_id, object_id, status, reason, version FROM {}.event_outcomes "
                "WHERE event_id = ANY(%s::uuid[])"
            ).format(s),
            ([r.event_id for r, _ in ready],),
        ).fetchall()
        found = {
            str(row[0]): EventOutcome(str(row[0]), str(row[1]), row[2], row[3], row[4])
            for row in rows
        }
        with self._lock:
            for receipt, future in ready:
                self._pending.pop(receipt.event_id, None)
                outcome = found.get(receipt.event_id)
                if outcome is None:
                    # folded past it without an outcome: it was already applied under the
                    # same event id earlier (a duplicate publish) or dead-lettered
                    future.set_exception(
                        TransientError(
                            f"event {receipt.event_id} was passed by the projection "
                            "without an outcome; see `blobledger dlq list`"
                        )
                    )
                else:
                    future.set_result(outcome)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
