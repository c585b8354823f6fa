"""Outcome events: deterministic ids make redelivery and reaper/worker races idempotent."""

from __future__ import annotations

from blobledger.blob_worker.outcomes import (
    REAPER_ACTOR,
    WORKER_ACTOR,
    failed_event,
    outcome_event_id,
    stored_event,
)
from blobledger.blob_worker.transfer import TransferResult
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import Envelope

OID = "5f0c6f6e-2d7e-4c52-9d0b-6a1f3b1f0e11"
UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def test_ids_are_deterministic_per_upload_and_kind() -> None:
    assert outcome_event_id("u1", "stored") == outcome_event_id("u1", "stored")
    assert outcome_event_id("u1", "stored") != outcome_event_id("u1", "failed")
    assert outcome_event_id("u1", "failed") != outcome_event_id("u2", "failed")


def test_worker_and_reaper_compensations_share_one_id() -> None:
    cmd = Envelope(object_id=OID, actor="alice")
    by_worker = failed_event(cmd, "u1", "timeout", "late")
    by_reaper = failed_event(
        Envelope(object_id=OID, actor=REAPER_ACTOR), "u1", "timeout", "late", actor=REAPER_ACTOR
    )
    assert by_worker.event_id == by_reaper.event_id
    assert (
        by_worker.envelope.actor == WORKER_ACTOR and by_worker.envelope.causation_id == cmd.event_id
    )


def test_stored_event_carries_the_result_and_encodes() -> None:
    cmd = Envelope(object_id=OID, actor="alice")
    r = TransferResult("ab" * 32, 10, "blobs/sha256/ab/" + "ab" * 32, True, 0, 0, 12)
    e = stored_event(cmd, UID, r)
    assert (e.sha256, e.size, e.key, e.dedup, e.duration_ms) == (r.sha256, 10, r.key, True, 12)
    assert e.envelope.correlation_id == cmd.correlation_id
    assert default_codec().decode(default_codec().encode(e)) == e
