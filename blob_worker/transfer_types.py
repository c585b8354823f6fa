"""The transfer's vocabulary: what an upload is asked to do, what it reports, where blobs go.

Apart from ``transfer`` (which re-exports all of it) so the strategies and helpers the
transfer is built from share these types without importing the entry point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.planning import MiB
from blobledger.blob_worker.sourcepolicy import SourcePolicy
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError
from blobledger.schemas.events import UploadRequested

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
STAGING_PREFIX = "staging/"


def content_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def staging_key(upload_id: str) -> str:
    return f"{STAGING_PREFIX}{upload_id}"


def check_declared_size(
    declared: int | None, actual: int, *, at_least: bool = False, what: str = "source"
) -> None:
    """The declared-size check: the one place that raises ``declared_size_mismatch``.

    ``actual`` is what ``what`` holds; with ``at_least`` it is a lower bound (a stream read
    so far), so only more than ``declared`` is wrong. ``declared`` None: nothing to check."""
    if declared is None or actual == declared or (at_least and actual < declared):
        return
    has = f"at least {actual}" if at_least else str(actual)
    raise UploadFailure("declared_size_mismatch", f"declared {declared} bytes, {what} has {has}")


@dataclass(frozen=True, slots=True)
class UploadSpec:
    upload_id: str
    source: str
    declared_sha256: str | None = None
    declared_size: int | None = None
    content_type: str | None = None

    @classmethod
    def from_command(cls, cmd: UploadRequested) -> UploadSpec:
        return cls(
            cmd.upload_id, cmd.source, cmd.declared_sha256, cmd.declared_size, cmd.content_type
        )

    def validate(self, max_blob_size: int) -> None:
        """Refuse a malformed or oversized command before any I/O."""
        if self.declared_sha256 is not None and not SHA256_HEX.match(self.declared_sha256):
            raise UploadFailure(
                "invalid_command",
                f"declared sha256 {self.declared_sha256!r} is not 64 lowercase hex",
            )
        if self.declared_size is not None and self.declared_size > max_blob_size:
            raise UploadFailure(
                "size_limit", f"declared {self.declared_size} bytes exceeds {max_blob_size}"
            )

    def check_content(self, sha256: str, size: int) -> None:
        """What was read against what was declared, before anything is completed under a
        content key (a wrong hash never lands)."""
        check_declared_size(self.declared_size, size)
        if self.declared_sha256 is not None and self.declared_sha256 != sha256:
            raise UploadFailure(
                "checksum_mismatch",
                f"declared sha256 {self.declared_sha256}, source hashes to {sha256}",
            )


@dataclass(frozen=True, slots=True)
class Progress:
    upload_id: str
    bytes_done: int
    total: int | None
    mbps: float
    state: str  # hashing | dedup | uploading | completing | promoting | stored | failed


@dataclass(frozen=True, slots=True)
class TransferResult:
    sha256: str
    size: int
    key: str
    dedup: bool
    part_count: int
    bytes_sent: int
    duration_ms: int
    resumed_parts: int = 0


@dataclass(frozen=True, slots=True)
class TransferOptions:
    bucket: str
    min_part_size: int = 16 * MiB
    max_blob_size: int = 5 * 1024**4
    max_in_flight: int = 8
    retry_attempts: int = 6
    http_timeout: float = 30.0
    #: "hash_first": hash, then upload straight to the content key (a stored hash costs
    #: 0 bytes); "stream": hash while uploading to staging, then promote (one pass)
    local_files: str = "hash_first"
    #: what the worker may read for a client (default: no local file, public http only)
    sources: SourcePolicy = field(default_factory=SourcePolicy)

    @classmethod
    def from_settings(cls, s: Settings, **overrides: Any) -> TransferOptions:
        return cls(
            s.s3_bucket,
            s.min_part_size,
            s.max_blob_size,
            max(1, s.max_in_flight_parts),
            s.s3_retry_attempts,
            s.http_timeout_seconds,
            **{"sources": SourcePolicy.from_settings(s), **overrides},
        )


class TransferCancelled(BlobledgerError):
    """Stopped on request (shutdown, revoked partition, deadline). In-flight parts were
    drained; the multipart upload (``key``, ``multipart_id``) is left for a resume."""

    code = "cancelled"

    def __init__(self, key: str | None = None, multipart_id: str | None = None) -> None:
        super().__init__(f"transfer cancelled (key={key}, multipart upload={multipart_id})")
        self.key = key
        self.multipart_id = multipart_id


class Promoter(Protocol):
    """Makes a completed staging object content-addressed."""

    def promote(self, bucket: str, src: str, dst: str, size: int) -> None: ...
