"""Why an upload failed, as a stable compensation reason.

Every permanent failure on the blob path is an :class:`UploadFailure` whose ``reason`` is
one of ``schemas.events.COMPENSATION_REASONS``: the runner turns it into a
``BlobUploadFailed`` event without guessing from message text.
"""

from __future__ import annotations

from blobledger.schemas.errors import PermanentError
from blobledger.schemas.events import COMPENSATION_REASONS


class UploadFailure(PermanentError):
    """A permanent, explained failure of one upload (retrying cannot help)."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in COMPENSATION_REASONS:
            raise ValueError(f"unknown compensation reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.code = reason
