"""Input validation for the write side (pure).

Refuses bad input before anything is published, with a :class:`ValidationError` that says
what is wrong and what is allowed. The fold re-checks what it must (JSON shape), so a
producer that skips this cannot corrupt the read model either.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from blobledger.schemas.errors import ValidationError
from blobledger.schemas.permissions import PERMISSIONS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}$")
_PRINCIPAL = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._@:+-]{0,255})$")


def validate_key(key: str, *, max_length: int) -> str:
    """Object keys look like paths: no control characters, no empty, ``.`` or ``..``
    segments, no leading slash, bounded length (in UTF-8 bytes, as S3 counts)."""
    if not isinstance(key, str) or not key:
        raise ValidationError("object key must be a non-empty string")
    if len(key.encode()) > max_length:
        raise ValidationError(f"object key is {len(key.encode())} bytes; the limit is {max_length}")
    if _CONTROL.search(key):
        raise ValidationError(
            "object key contains control characters; use printable characters only"
        )
    if key.startswith("/"):
        raise ValidationError("object key must not start with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValidationError(
                f"object key {key!r} has an empty, '.' or '..' segment; keys are normalized paths"
            )
    return key


def _check_value(value: Any, depth: int, max_depth: int, path: str) -> None:
    if depth > max_depth:
        raise ValidationError(f"metadata nests deeper than {max_depth} levels at {path}")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > 2**63 - 1:
            raise ValidationError(f"metadata integer at {path} does not fit 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"metadata number at {path} is not finite (NaN/inf are not JSON)")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"metadata key {k!r} at {path} is not a string")
            _check_value(v, depth + 1, max_depth, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, depth + 1, max_depth, f"{path}[{i}]")
        return
    raise ValidationError(
        f"metadata value at {path} has type {type(value).__name__}; allowed: "
        "str, int, float, bool, None, list, dict"
    )


def metadata_json(
    metadata: Mapping[str, Any] | None,
    *,
    max_bytes: int,
    max_depth: int,
    allow_null_values: bool = False,
) -> str:
    """Validate a metadata document (or a merge patch) and return its compact JSON."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise ValidationError("metadata must be a JSON object (a dict)")
    _check_value(metadata, 1, max_depth, "$")
    text = json.dumps(metadata, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if len(text.encode()) > max_bytes:
        raise ValidationError(
            f"metadata is {len(text.encode())} bytes as JSON; the limit is {max_bytes}. "
            "Store large documents as a blob instead"
        )
    return text


def validate_tags(tags: Iterable[str]) -> list[str]:
    out = []
    for t in tags:
        if not isinstance(t, str) or not _TAG.match(t):
            raise ValidationError(
                f"tag {t!r} is invalid: 1-128 characters of letters, digits and ._:/=- , "
                "starting with a letter or digit"
            )
        out.append(t)
    return sorted(set(out))


def validate_principal(principal: str) -> str:
    if not isinstance(principal, str) or not _PRINCIPAL.match(principal):
        raise ValidationError(f"principal {principal!r} is invalid: use '*' or a user/service name")
    return principal


def validate_actor(actor: str) -> str:
    if actor.startswith("system:"):
        raise ValidationError("actors named 'system:*' are reserved for blobledger's own workers")
    if actor == "*":
        raise ValidationError("'*' means everyone in an ACL; it cannot act")
    return validate_principal(actor)


def validate_permissions(perms: Iterable[str]) -> list[str]:
    out = sorted(set(perms))
    bad = [p for p in out if p not in PERMISSIONS]
    if bad:
        raise ValidationError(f"unknown permissions {bad}; allowed: {sorted(PERMISSIONS)}")
    return out


def validate_expected_version(v: int | None) -> int | None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
        raise ValidationError(f"expected_version must be a non-negative integer, not {v!r}")
    return v


def validate_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.lower()
    if not _SHA256.match(v):
        raise ValidationError(f"declared sha256 {value!r} is not 64 hex characters")
    return v


def validate_size(size: int | None, *, max_size: int) -> int | None:
    if size is None:
        return None
    if not isinstance(size, int) or size < 0:
        raise ValidationError(f"declared size must be a non-negative integer, not {size!r}")
    if size > max_size:
        raise ValidationError(f"declared size {size} exceeds the limit of {max_size} bytes")
    return size
