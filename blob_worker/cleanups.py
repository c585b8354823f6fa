"""Undo steps for what one upload has opened (s3transfer's ``add_failure_cleanup``).

Each step is registered where its resource is created (a multipart upload, a staging
object) and dropped once that resource is finished, so a failure on any path undoes
exactly what is still open, and nothing that already reached its final state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import structlog

from blobledger.schemas.errors import BlobledgerError

log = structlog.get_logger(__name__)


class _Step(NamedTuple):
    what: str
    undo: Callable[[], object]


class FailureCleanups:
    """Registered by the upload's own thread only; run by it when the upload fails for good."""

    def __init__(self) -> None:
        self._steps: dict[int, _Step] = {}
        self._ids = itertools.count()

    def add(self, what: str, undo: Callable[[], object]) -> Callable[[], None]:
        """Register ``undo``; returns the function that drops it again (call it once
        ``what`` is finished)."""
        n = next(self._ids)
        self._steps[n] = _Step(what, undo)

        def drop() -> None:
            self._steps.pop(n, None)

        return drop

    def run(self) -> None:
        """Undo everything still registered, newest first. Best effort: a step that fails
        is logged and the next one still runs (the reaper catches what this misses)."""
        while self._steps:
            _, step = self._steps.popitem()
            try:
                step.undo()
            except BlobledgerError as e:
                log.warning("cleanup.failed", what=step.what, error=str(e))
