"""Bounded parallel part uploads on a shared thread pool."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from types import TracebackType
from typing import Any

from blobledger.blob_worker.transfer_types import TransferCancelled


class PartPump:
    """Runs part uploads on ``pool`` with at most ``slots`` parts in flight. The producer
    takes a slot *before* reading a part, so buffered bytes never exceed slots x part
    size. The first failure stops further submissions and is re-raised.

    As a context manager it lets every started part finish when the block fails, so no
    thread still writes to a multipart upload that is about to be aborted."""

    def __init__(self, pool: Executor, slots: int, cancel: threading.Event) -> None:
        self._pool, self._cancel = pool, cancel
        self._sem = threading.Semaphore(slots)
        self._futures: list[Future[Any]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> PartPump:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.wait()

    def acquire(self) -> None:
        while not self._sem.acquire(timeout=0.2):
            self.check()
        try:
            self.check()
        except BaseException:
            self._sem.release()
            raise

    def release(self) -> None:
        self._sem.release()

    def check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._cancel.is_set():
            raise TransferCancelled()

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the pool in the slot taken by ``acquire``."""
        # parts log with the command's bound event_id/correlation_id
        ctx = contextvars.copy_context()
        self._futures.append(self._pool.submit(ctx.run, self._run, fn, *args))

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            self.check()  # a part queued behind a failure is not sent
            return fn(*args)
        except BaseException as e:
            with self._lock:
                if self._error is None or isinstance(self._error, TransferCancelled):
                    self._error = e
            raise
        finally:
            self._sem.release()

    def wait(self) -> None:
        """Let every started part finish (or fail) without raising."""
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            if not f.cancelled():
                f.exception()

    def drain(self) -> list[Any]:
        """Wait for every started part; raise the first failure after all have stopped."""
        for f in self._futures:
            f.exception()
        if self._error is not None:
            raise self._error
        return [f.result() for f in self._futures]
