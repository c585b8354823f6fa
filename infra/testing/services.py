"""A projector and a blob worker running in background threads of a test process.

Shipped with the library (like ``structlog.testing``) so users' own suites can fold and
upload against the ``settings`` fixture without managing processes:

    with ThreadedProjector(settings), ThreadedWorker(settings):
        ...
"""

from __future__ import annotations

import threading
from typing import Any

from blobledger.infra.settings import Settings


class ThreadedProjector:
    """A projector folding in a background thread."""

    def __init__(self, settings: Settings) -> None:
        from blobledger.infra import bootstrap

        self.projector = bootstrap.projector(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.projector.run, args=(self._stop,), daemon=True, name="test-projector"
        )
        self._thread.start()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(15)
            self.projector.close()

    def __enter__(self) -> ThreadedProjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedWorker:
    """A blob worker in a background thread, with a private (in-memory) hash cache so
    tests do not share dedup state through the user's cache file."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        from blobledger.blob_worker.hashcache import HashCache
        from blobledger.infra import bootstrap

        self.worker = bootstrap.worker(settings, hash_cache=HashCache(), **kwargs)
        self._thread = threading.Thread(target=self.worker.run, daemon=True, name="test-worker")
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.worker.stop()
            self._thread.join(60)
            self.worker.close()

    def __enter__(self) -> ThreadedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
