"""A cancel flag that reaches code blocked in I/O.

Setting a ``threading.Event`` wakes nobody blocked on a socket: a transfer waiting for an
http source's next bytes would notice a cancel only when its read timed out, and a
revoked partition or a SIGTERM would wait that long. So :class:`Cancel` also runs the
hooks registered with :meth:`Cancel.on_cancel` (an http source shuts its socket down),
the way s3transfer's coordinator makes its readers raise its stored exception.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Cancel(threading.Event):
    """An event whose ``set`` also runs the registered hooks, once each."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        # reentrant: a signal handler may cancel while this thread is inside ``set``
        self._lock = threading.RLock()

    def set(self) -> None:
        with self._lock:
            super().set()
            hooks = list(self._hooks.values())
            self._hooks.clear()
        for hook in hooks:
            _run(hook)

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` when cancelled (now, if already); returns what unregisters it."""
        with self._lock:
            if not self.is_set():
                key = next(self._ids)
                self._hooks[key] = hook
                return lambda: self._forget(key)
        _run(hook)
        return lambda: None

    def _forget(self, key: int) -> None:
        with self._lock:
            self._hooks.pop(key, None)


def on_cancel(cancel: threading.Event, hook: Callable[[], None]) -> Callable[[], None]:
    """``cancel.on_cancel(hook)`` for a :class:`Cancel`; a plain event runs no hooks."""
    if isinstance(cancel, Cancel):
        return cancel.on_cancel(hook)
    return lambda: None


def _run(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception as e:  # a hook must not keep the others (or the canceller) from running
        log.warning("cancel.hook_failed", error=str(e))
