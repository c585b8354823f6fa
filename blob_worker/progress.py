"""Upload progress: bytes counted from any thread, reported at most every 0.5 s (a sink
that sees every part would cost more than the parts on a fast disk)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from blobledger.blob_worker.transfer_types import Progress

log = structlog.get_logger(__name__)


class Meter:
    def __init__(self, upload_id: str, sink: Callable[[Progress], None] | None) -> None:
        self.upload_id, self.sink = upload_id, sink
        self.total: int | None = None
        self.done = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last = 0.0
        self.state = "hashing"

    def restart(self, state: str, total: int | None) -> None:
        """A new phase (hashing, uploading) counts from 0 with its own rate."""
        with self._lock:
            self.state, self.total, self.done = state, total, 0
            self._started = time.monotonic()
        self.emit(state, force=True)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
        self.emit(self.state)

    def final(self, state: str, *, done: int | None = None) -> None:
        """The last report of a run (stored, failed), always sent."""
        if done is not None:
            with self._lock:
                self.done = done
        self.emit(state, force=True)

    def emit(self, state: str, *, force: bool = False) -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        try:
            self.sink(
                Progress(
                    self.upload_id,
                    self.done,
                    self.total,
                    round(self.done / elapsed / 1e6, 2),
                    state,
                )
            )
        except Exception as e:
            log.debug("progress.sink_failed", error=str(e))
