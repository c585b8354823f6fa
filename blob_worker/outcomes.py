"""Completion and compensation events with deterministic ids (pure).

An upload has at most one completion id and one compensation id: ``uuid5(upload_id,
kind)``. A redelivered command, a second worker after a rebalance, or the reaper racing
a worker therefore emit the *same* event id, and the fold's idempotency absorbs the
duplicate; a completion and a compensation for one upload are ordered by the fold's
state machine (``lifecycle``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from blobledger.schemas.events import BlobStored, BlobUploadFailed, Envelope

if TYPE_CHECKING:  # the transfer's result type only; this module stays free of I/O
    from blobledger.blob_worker.transfer import TransferResult

#: fixed namespace for outcome ids (uuid5 of the DNS name, so it is reproducible)
OUTCOME_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "outcomes.blob-worker.blobledger")
WORKER_ACTOR = "system:blob-worker"
REAPER_ACTOR = "system:reaper"


def outcome_event_id(upload_id: str, kind: str) -> str:
    """``kind``: "stored" or "failed"."""
    if kind not in ("stored", "failed"):
        raise ValueError(f"unknown outcome kind {kind!r}")
    return str(uuid.uuid5(OUTCOME_NAMESPACE, f"{upload_id}:{kind}"))


def stored_event(
    command: Envelope, upload_id: str, result: TransferResult, *, actor: str = WORKER_ACTOR
) -> BlobStored:
    env = command.caused(actor=actor, event_id=outcome_event_id(upload_id, "stored"))
    return BlobStored(
        env,
        upload_id=upload_id,
        sha256=result.sha256,
        size=result.size,
        key=result.key,
        dedup=result.dedup,
        duration_ms=result.duration_ms,
        part_count=result.part_count,
    )


def failed_event(
    command: Envelope, upload_id: str, reason: str, detail: str, *, actor: str = WORKER_ACTOR
) -> BlobUploadFailed:
    env = command.caused(actor=actor, event_id=outcome_event_id(upload_id, "failed"))
    return BlobUploadFailed(env, upload_id=upload_id, reason=reason, detail=detail[:2000])
