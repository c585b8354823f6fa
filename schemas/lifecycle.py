"""The blob-reference state machine (pure): what completion and compensation do to an upload.

projectors/fold.py drives it, so the live projector and a replay agree on every upload's
fate. States: ``pending`` until the first terminal event; ``stored`` (finalized, the
object's committed blob), ``compensated`` (rolled back), ``orphaned`` (bytes stored but
nothing references them: a completion arrived for an upload that was superseded,
compensated, or whose object was deleted; a garbage-collection candidate).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UploadState(enum.StrEnum):
    PENDING = "pending"
    STORED = "stored"
    COMPENSATED = "compensated"
    ORPHANED = "orphaned"

    @property
    def terminal(self) -> bool:
        return self is not UploadState.PENDING


@dataclass(frozen=True, slots=True)
class Transition:
    state: UploadState
    #: True only when the object's committed blob becomes this upload's bytes
    finalize: bool = False


def on_completion(state: UploadState, *, is_current: bool) -> Transition:
    """Bytes were stored. ``is_current``: the upload is still the object's pending one
    (not superseded by a newer attach, object not deleted, hash as declared)."""
    if state is UploadState.PENDING:
        return (
            Transition(UploadState.STORED, True) if is_current else Transition(UploadState.ORPHANED)
        )
    if state is UploadState.COMPENSATED:
        # rolled back earlier (e.g. by the reaper) but the worker finished after all
        return Transition(UploadState.ORPHANED)
    return Transition(state)  # stored/orphaned already: a redelivery changes nothing


def on_compensation(state: UploadState) -> Transition:
    """The upload failed or timed out: roll back a pending reference; later ones are no-ops."""
    if state is UploadState.PENDING:
        return Transition(UploadState.COMPENSATED)
    return Transition(state)
