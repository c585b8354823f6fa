"""Receipts and outcomes: what publishing returns, and what the fold decided.

A :class:`Receipt` says where an event sits in the log; read-your-writes waits until the
projection passes it and returns the :class:`EventOutcome` row for its ``event_id``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Receipt:
    """Where a published event sits in the log; the key to wait for its outcome."""

    event_id: str
    object_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class EventOutcome:
    event_id: str
    object_id: str
    status: str
    reason: str | None
    version: int

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"
