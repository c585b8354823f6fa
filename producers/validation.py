"""Input validation for the write side (pure): the write contract, as ``ValidationError``s.

The rules are :mod:`blobledger.schemas.contract`'s, the same ones the fold applies to the
log; here they refuse bad input before anything is published, with a message that says
what is wrong with what the caller gave and what is allowed. Settings may lower the
contract's limits, never raise them (:func:`check_limits`), so whatever passes here the
fold accepts too (tests/unit/test_properties_validation.py holds the two to that).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from blobledger.schemas import contract
from blobledger.schemas.contract import Violation
from blobledger.schemas.errors import ConfigurationError, ValidationError
from blobledger.schemas.events import Event, SchemaViolation
from blobledger.schemas.events import check_event as check_record


def _ok(violation: Violation | None) -> None:
    if violation is not None:
        raise ValidationError(violation.message)


class Limits(Protocol):
    """The settings that bound what a client sends (``infra.settings.Settings``)."""

    @property
    def max_key_length(self) -> int: ...
    @property
    def max_metadata_bytes(self) -> int: ...
    @property
    def max_metadata_depth(self) -> int: ...
    @property
    def max_blob_size(self) -> int: ...
    @property
    def upload_deadline_seconds(self) -> int: ...


def check_limits(limits: Limits) -> None:
    """Refuse settings that would let through what the fold rejects: the contract's limits
    are hard caps, a setting may only lower them."""
    caps = {
        "max_key_length": contract.MAX_KEY_BYTES,
        "max_metadata_bytes": contract.MAX_METADATA_BYTES,
        "max_metadata_depth": contract.MAX_METADATA_DEPTH,
        "max_blob_size": contract.MAX_BLOB_SIZE,
        "upload_deadline_seconds": contract.MAX_UPLOAD_WINDOW_US // 1_000_000,
    }
    for name, cap in caps.items():
        value = getattr(limits, name)
        if value > cap:
            raise ConfigurationError(
                f"BLOBLEDGER_{name.upper()}={value} is above the write contract's limit "
                f"{cap}: the projection would reject what it lets through; a setting may "
                "only lower it"
            )


def validate_key(key: str, *, max_length: int = contract.MAX_KEY_BYTES) -> str:
    """Object keys look like paths: no control characters, no empty, ``.`` or ``..``
    segments, no leading slash, bounded length (in UTF-8 bytes, as S3 counts)."""
    _ok(contract.key_violation(key, max_bytes=max_length))
    return key


def metadata_json(
    metadata: Mapping[str, Any] | None,
    *,
    max_bytes: int = contract.MAX_METADATA_BYTES,
    max_depth: int = contract.MAX_METADATA_DEPTH,
) -> str:
    """Validate a metadata document (or a merge patch) and return its compact JSON."""
    metadata = {} if metadata is None else metadata
    if isinstance(metadata, Mapping) and not isinstance(metadata, dict):
        metadata = dict(metadata)
    _ok(contract.metadata_violation(metadata, max_depth=max_depth))
    text = json.dumps(metadata, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # the text is what the fold parses: hold it to the fold's own check (size included)
    parsed = contract.parse_metadata(text, max_bytes=max_bytes, max_depth=max_depth)
    if isinstance(parsed, Violation):
        raise ValidationError(parsed.message)
    return text


def validate_tags(tags: Iterable[str]) -> list[str]:
    out = list(tags)
    _ok(contract.tags_violation(out))
    return sorted(set(out))


def validate_tenant(tenant: str) -> str:
    _ok(contract.tenant_violation(tenant))
    return tenant


def validate_principal(principal: str) -> str:
    _ok(contract.principal_violation(principal))
    return principal


def validate_actor(actor: str) -> str:
    _ok(contract.actor_violation(actor))
    if actor.startswith("system:"):
        # the fold takes system actors from the workers' keys only (schemas/auth.py)
        raise ValidationError("actors named 'system:*' are reserved for blobledger's own workers")
    return actor


def validate_permissions(perms: Iterable[str]) -> list[str]:
    out = list(perms)
    _ok(contract.permissions_violation(out))
    return sorted(set(out))


def validate_expected_version(v: int | None) -> int | None:
    _ok(contract.expected_version_violation(v))
    return v


def validate_sha256(value: str | None) -> str | None:
    """A declared SHA-256, in either case; returned in lowercase, as blobs are keyed."""
    if value is None:
        return None
    v = value.lower() if isinstance(value, str) else value
    _ok(contract.sha256_violation(v, "declared sha256"))
    return v


def validate_size(size: int | None, *, max_size: int = contract.MAX_BLOB_SIZE) -> int | None:
    if size is None:
        return None
    _ok(contract.size_violation(size, "declared size", max_size=max_size))
    return size


def validate_content_type(value: str | None) -> str | None:
    _ok(contract.content_type_violation(value))
    return value


def validate_note(value: str | None, what: str = "reason") -> str | None:
    _ok(contract.note_violation(value, what))
    return value


def check_event(event: Event) -> None:
    """The last guard before publishing: the whole contract, as the fold will apply it,
    and what the decoder requires of a record (so nothing is dead-lettered either)."""
    _ok(contract.event_violation(event))
    try:
        check_record(event)
    except SchemaViolation as e:
        raise ValidationError(str(e)) from e
