"""What queries return: read-model views of objects, versions, audit rows and uploads.

Shared vocabulary (pure): the projectors' queries build them, the client and the CLI hand
them to users, so they live in the contract layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    key: str
    upload_id: str


@dataclass(frozen=True)
class ObjectView:
    object_id: str
    tenant: str
    key: str
    version: int
    metadata: dict[str, Any]
    tags: list[str]
    content_type: str | None
    deleted: bool
    acl: dict[str, list[str]]
    blob: BlobInfo | None
    pending_upload_id: str | None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("created_at", "updated_at"):
            if d.get(k) is not None:
                d[k] = d[k].isoformat()
        return d


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    event_id: str
    event_type: str
    actor: str
    occurred_at: datetime
    correlation_id: str
    snapshot: ObjectView

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "actor": self.actor,
            "occurred_at": self.occurred_at.isoformat(),
            "correlation_id": self.correlation_id,
            "snapshot": self.snapshot.to_json(),
        }


@dataclass(frozen=True)
class AuditEntry:
    event_id: str
    object_id: str
    event_type: str
    status: str
    reason: str | None
    version: int
    occurred_at: datetime
    correlation_id: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["occurred_at"] = self.occurred_at.isoformat()
        return d


@dataclass(frozen=True)
class UploadView:
    upload_id: str
    object_id: str
    state: str
    source: str
    requested_version: int
    sha256: str | None
    size: int | None
    key: str | None
    dedup: bool
    reason: str | None
    deadline: datetime

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["deadline"] = self.deadline.isoformat()
        return d


@dataclass(frozen=True)
class Page:
    items: list[ObjectView]
    next_cursor: str | None
