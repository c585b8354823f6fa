"""Upload progress: what ``blobledger put`` shows, measured where the bytes land.

During ``uploading`` the count is bytes *stored*: a part counts once S3 acknowledged it
(or it was kept from an earlier attempt), never when it was read, so the bar cannot run
ahead of the store. Other phases name what is counted: ``hashing`` (bytes hashed),
``dedup`` (asking whether the content is stored), ``completing``/``promoting`` (all bytes
stored, the object not yet final), then ``stored`` or ``failed``.

Reports are rate-limited per upload (:data:`MIN_INTERVAL`): a sink that saw every part
would cost more than small parts on a fast link. A report held back by the limit is sent
when the interval is up (a timer), so a burst of parts followed by a slow last part does
not leave the bar showing the burst's start."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from blobledger.blob_worker.transfer_types import Progress
from blobledger.infra.progress import RateWindow

log = structlog.get_logger(__name__)

#: at most 4 reports a second per upload
MIN_INTERVAL = 0.25


class Meter:
    def __init__(
        self,
        upload_id: str,
        sink: Callable[[Progress], None] | None,
        *,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upload_id, self.sink = upload_id, sink
        self.min_interval, self.clock = min_interval, clock
        self.total: int | None = None
        self.done = 0
        self.state = "hashing"
        self._lock = threading.Lock()
        self._window = RateWindow()
        self._window.reset(0, clock())
        self._last = float("-inf")
        self._trailing: threading.Timer | None = None
        self._closed = False

    def restart(self, state: str, total: int | None) -> None:
        """A new phase (hashing, dedup, uploading) counts from 0 with its own rate."""
        with self._lock:
            self.state, self.total, self.done = state, total, 0
            self._window.reset(0, self.clock())
        self.emit(force=True)

    def phase(self, state: str) -> None:
        """A new phase that keeps the count (completing, promoting: all bytes stored)."""
        with self._lock:
            self.state = state
        self.emit(force=True)

    def add(self, n: int) -> None:
        """``n`` more bytes done in this phase (uploading: acknowledged by S3)."""
        with self._lock:
            self.done += n
            self._window.add(self.done, self.clock())
        self.emit()

    def final(self, state: str, *, done: int | None = None) -> None:
        """The last report of a run (stored, failed), always sent; nothing follows it."""
        with self._lock:
            self.state = state
            if done is not None:
                self.done = done
        self.emit(force=True)
        with self._lock:
            self._closed = True

    def emit(self, *, force: bool = False) -> None:
        """Report now if forced or the interval is up, else once it is (one timer)."""
        if self.sink is None:
            return
        with self._lock:
            if self._closed:
                return
            now = self.clock()
            wait = self._last + self.min_interval - now
            if not force and wait > 0:
                if self._trailing is None:
                    self._trailing = threading.Timer(wait, self._flush)
                    self._trailing.daemon = True
                    self._trailing.start()
                return
            self._last = now
            if self._trailing is not None:  # this report supersedes the held-back one
                self._trailing.cancel()
                self._trailing = None
            report = Progress(
                self.upload_id,
                self.done,
                self.total,
                round(self._window.rate(now) / 1e6, 2),
                self.state,
            )
            try:  # under the lock, so reports leave in order (the sink only enqueues)
                self.sink(report)
            except Exception as e:
                log.debug("progress.sink_failed", error=str(e))

    def _flush(self) -> None:
        """The held-back report, on the timer's thread (unless it was superseded)."""
        with self._lock:
            if self._trailing is not threading.current_thread():
                return
            self._trailing = None
        self.emit()
