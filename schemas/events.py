"""Typed events and commands, one dataclass per Avro record in ``schemas/avro``.

Pure module: the fold, the producers and the workers share these types; only the codec
knows about Avro. Each class's ``schema_name`` is its Avro full name.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar


def new_id() -> str:
    return str(uuid.uuid4())


#: namespace of object ids derived from (tenant, key)
OBJECT_NAMESPACE = uuid.UUID("6f1d3c0e-8a0b-5b7e-9c39-2f4b1b8e5d10")


def object_id_for(tenant: str, key: str) -> str:
    """Object ids are derived from the tenant and key, so a key names one object, two
    creates of the same key land on the same partition, and the fold rejects the second
    (``exists``) deterministically."""
    # uuid.uuid5 spelled out, 3x faster: the fold checks every create's id against it
    h = hashlib.sha1(_NAMESPACE_BYTES + f"{tenant}\x00{key}".encode(), usedforsecurity=False)
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{'89ab'[int(x[16], 16) & 3]}{x[17:20]}-{x[20:32]}"


_NAMESPACE_BYTES = OBJECT_NAMESPACE.bytes


def now_us() -> int:
    """Now, in microseconds since the epoch (UTC): the unit of every timestamp field."""
    return time.time_ns() // 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def us_to_datetime(us: int) -> datetime:
    """Exact (integer arithmetic; ``fromtimestamp(us / 1e6)`` can be off by a microsecond)."""
    return _EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US


@dataclass(slots=True, unsafe_hash=True)
class Envelope:
    object_id: str
    actor: str
    tenant: str = "default"
    event_id: str = field(default_factory=new_id)
    occurred_at: int = field(default_factory=now_us)
    correlation_id: str = field(default_factory=new_id)
    causation_id: str | None = None
    expected_version: int | None = None

    def caused(self, *, actor: str, event_id: str | None = None) -> Envelope:
        """The envelope of an event caused by this one: same object, tenant and correlation."""
        return Envelope(
            object_id=self.object_id,
            actor=actor,
            tenant=self.tenant,
            event_id=event_id or new_id(),
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
        )


# Events (and the fold's states) are immutable by convention, not ``frozen=True``: a frozen
# dataclass sets every field through ``object.__setattr__``, and on the decode + fold hot
# path (P1) that cost more than the 5% the architecture allows (measured side by side with
# a decode + fold loop over the benchmark workload). Nothing assigns to a field after
# construction; tests/unit/test_fold_immutability.py holds the fold to that.
@dataclass(slots=True, unsafe_hash=True)
class Event:
    """Base of everything that travels on a topic. ``envelope`` is always the first field."""

    schema_name: ClassVar[str] = ""
    envelope: Envelope

    @property
    def event_type(self) -> str:
        return type(self).__name__

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def object_id(self) -> str:
        return self.envelope.object_id

    def to_record(self) -> dict[str, Any]:
        # hand-rolled instead of dataclasses.asdict, which deep-copies and is 3x slower
        record = {name: getattr(self, name) for name in _payload_fields(type(self))}
        e = self.envelope
        record["envelope"] = {name: getattr(e, name) for name in _ENVELOPE_FIELDS}
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        """The event of a decoded Avro record, refusing values the schema's types let
        through but the read model cannot hold (:func:`check_record`): a
        :class:`SchemaViolation` (a ``ValueError``) sends the message to the DLQ."""
        e = record["envelope"]
        _check_envelope(e)
        env = Envelope(
            e["object_id"],
            e["actor"],
            e["tenant"],
            e["event_id"],
            e["occurred_at"],
            e["correlation_id"],
            e.get("causation_id"),
            e.get("expected_version"),
        )
        names = _payload_fields(cls)
        _check_payload(cls, record, names)
        return cls(env, *[record[n] for n in names])


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
_PAYLOAD_FIELDS: dict[type, tuple[str, ...]] = {}


def _payload_fields(cls: type) -> tuple[str, ...]:
    names = _PAYLOAD_FIELDS.get(cls)
    if names is None:
        names = _PAYLOAD_FIELDS[cls] = tuple(f.name for f in fields(cls) if f.name != "envelope")
    return names


# --- what a decoded record must satisfy beyond its Avro types --------------------------------
# Avro says "string" and "long"; the read model stores ids as uuid, text without NUL (Postgres
# text and jsonb refuse U+0000) and times as timestamptz. One such record would fail its whole
# batch's COPY forever, so the decoder refuses it and the projector dead-letters it instead.
class SchemaViolation(ValueError):
    """A record that fits its Avro schema but breaks the event contract."""


#: ids are canonical UUID text (lowercase, hyphenated: what ``str(uuid4())`` gives and what
#: Postgres returns), so the fold's lookups by id string match the stored keys exactly
_is_uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z").match
#: timestamps (microseconds since the epoch) must be representable: years 1..9999
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_800_000_000 - 1
#: payload fields holding UUIDs / timestamps
UUID_FIELDS = frozenset({"upload_id"})
TIME_FIELDS = frozenset({"deadline"})
#: UTF-8 byte limits of the text the read model indexes (a btree entry must stay under
#: ~2.7 kB, a GIN entry likewise), generous next to what producers allow (keys 1024 bytes,
#: tags 128, principals 256): an over-long value would fail its batch, or an index rebuild
TEXT_LIMITS = {"tenant": 256, "actor": 512, "key": 2048, "principal": 512, "sha256": 128}
#: ... and of each item of a list of text (tags, permissions)
ITEM_LIMIT = 512


def _too_long(v: str, limit: int) -> bool:
    return len(v) > limit // 4 and len(v.encode("utf-8", "surrogatepass")) > limit


_is_two_uuids = re.compile(
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}){2}\Z"
).match


def _check_envelope(e: dict[str, Any]) -> None:
    # the hot path: one regex, one NUL scan, cheap length bounds; the slow path below
    # says precisely what is wrong (or finds nothing: a long but valid multibyte actor)
    t = e["occurred_at"]
    tenant, actor = e["tenant"], e["actor"]
    if (
        _is_two_uuids(e["event_id"] + e["object_id"]) is not None
        and "\x00" not in tenant + actor + e["correlation_id"] + (e.get("causation_id") or "")
        and len(tenant) <= 64
        and len(actor) <= 128
        and MIN_US <= t <= MAX_US
    ):
        return
    _check_envelope_slowly(e)


def _check_envelope_slowly(e: dict[str, Any]) -> None:
    for name in ("event_id", "object_id"):
        v = e[name]
        if not _is_uuid(v):
            raise SchemaViolation(f"envelope.{name} {v[:64]!r} is not a canonical UUID")
    for name in ("tenant", "actor", "correlation_id"):
        if "\x00" in e[name]:
            raise SchemaViolation(f"envelope.{name} contains a NUL character")
    for name in ("tenant", "actor"):
        if _too_long(e[name], TEXT_LIMITS[name]):
            raise SchemaViolation(f"envelope.{name} is longer than {TEXT_LIMITS[name]} bytes")
    c = e.get("causation_id")
    if c is not None and "\x00" in c:
        raise SchemaViolation("envelope.causation_id contains a NUL character")
    t = e["occurred_at"]
    if not MIN_US <= t <= MAX_US:
        raise SchemaViolation(f"envelope.occurred_at {t} is outside years 1..9999")


def _check_payload(cls: type, record: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        v = record[name]
        if type(v) is str:
            if "\x00" in v:
                raise SchemaViolation(f"{cls.__name__}.{name} contains a NUL character")
            if name in UUID_FIELDS and not _is_uuid(v):
                raise SchemaViolation(f"{cls.__name__}.{name} {v[:64]!r} is not a canonical UUID")
            limit = TEXT_LIMITS.get(name)
            if limit is not None and _too_long(v, limit):
                raise SchemaViolation(f"{cls.__name__}.{name} is longer than {limit} bytes")
        elif type(v) is list:
            for x in v:
                if "\x00" in x:
                    raise SchemaViolation(f"{cls.__name__}.{name} has an item with a NUL character")
                if _too_long(x, ITEM_LIMIT):
                    raise SchemaViolation(
                        f"{cls.__name__}.{name} has an item longer than {ITEM_LIMIT} bytes"
                    )
        elif name in TIME_FIELDS and not MIN_US <= v <= MAX_US:
            raise SchemaViolation(f"{cls.__name__}.{name} {v} is outside years 1..9999")


def check_event(event: Event) -> None:
    """Raise :class:`SchemaViolation` when ``event`` could not be decoded back (producers
    call it before publishing, so nothing they send is dead-lettered for it)."""
    type(event).from_record(event.to_record())


@dataclass(slots=True, unsafe_hash=True)
class ObjectCreated(Event):
    schema_name: ClassVar[str] = "blobledger.ObjectCreated"
    key: str = ""
    metadata_json: str = "{}"
    tags: list[str] = field(default_factory=list)
    content_type: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class MetadataUpdated(Event):
    schema_name: ClassVar[str] = "blobledger.MetadataUpdated"
    patch_json: str = "{}"


@dataclass(slots=True, unsafe_hash=True)
class TagsChanged(Event):
    schema_name: ClassVar[str] = "blobledger.TagsChanged"
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass(slots=True, unsafe_hash=True)
class AclChanged(Event):
    schema_name: ClassVar[str] = "blobledger.AclChanged"
    principal: str = ""
    permissions: list[str] = field(default_factory=list)


@dataclass(slots=True, unsafe_hash=True)
class ObjectDeleted(Event):
    schema_name: ClassVar[str] = "blobledger.ObjectDeleted"
    reason: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class BlobAttached(Event):
    schema_name: ClassVar[str] = "blobledger.BlobAttached"
    upload_id: str = ""
    source: str = ""
    declared_sha256: str | None = None
    declared_size: int | None = None
    content_type: str | None = None
    deadline: int = 0


@dataclass(slots=True, unsafe_hash=True)
class BlobStored(Event):
    """Completion event, emitted by a blob worker."""

    schema_name: ClassVar[str] = "blobledger.BlobStored"
    upload_id: str = ""
    sha256: str = ""
    size: int = 0
    key: str = ""
    dedup: bool = False
    duration_ms: int = 0
    part_count: int = 0


@dataclass(slots=True, unsafe_hash=True)
class BlobUploadFailed(Event):
    """Compensation event: emitted by a blob worker or the reaper."""

    schema_name: ClassVar[str] = "blobledger.BlobUploadFailed"
    upload_id: str = ""
    reason: str = ""
    detail: str = ""


@dataclass(slots=True, unsafe_hash=True)
class UploadRequested(Event):
    """Command for the blob workers (blob-commands topic)."""

    schema_name: ClassVar[str] = "blobledger.UploadRequested"
    upload_id: str = ""
    source: str = ""
    declared_sha256: str | None = None
    declared_size: int | None = None
    content_type: str | None = None
    deadline: int = 0


#: every concrete type, by Avro full name
EVENT_TYPES: dict[str, type[Event]] = {
    cls.schema_name: cls
    for cls in (
        ObjectCreated,
        MetadataUpdated,
        TagsChanged,
        AclChanged,
        ObjectDeleted,
        BlobAttached,
        BlobStored,
        BlobUploadFailed,
        UploadRequested,
    )
}

#: the reasons a compensation can carry (stable codes for scripts and dashboards)
COMPENSATION_REASONS = (
    "unreadable_source",
    "source_not_found",
    "http_error",
    "truncated_source",
    "size_limit",
    "declared_size_mismatch",
    "checksum_mismatch",
    "retry_budget_exhausted",
    "timeout",
    "invalid_command",
    "source_forbidden",
    "source_not_regular",
    "source_timeout",
)
