"""The write contract (pure): what an event must hold for the read model to take it.

One definition, two guards. The client (producers/validation.py) checks it before anything
is published, to say what is wrong with the input the user typed; the fold
(projectors/fold.py) checks it again on the log and rejects an event that breaks it with
the violation's ``reason``, so the read model holds only what a client could have produced,
whoever wrote the bytes (DESIGN.md, "Trust model"). What the decoder already refuses
(schemas/events.py: non-canonical ids, NUL in plain strings, text too long for an index)
never reaches the fold; this is the finer rule on top.

Limits are hard caps. ``Settings`` defaults to them and may lower one (the client then
refuses earlier, quoting the setting); a setting above a cap is refused when a client is
built, since the fold would reject what it let through.

Times: the fold is pure and has no clock, so an event's ``occurred_at`` is held to fixed
bounds, 2000-01-01 <= t < 2100-01-01 UTC (they catch a zero, seconds taken for
microseconds, a garbage value, the same way in every replay), and an upload deadline is
measured from its event's own ``occurred_at``: not before it, at most 30 days after.

Each check returns a :class:`Violation`, or None when the value is fine: the fold turns it
into a rejection without raising on its hot path, the client into a ``ValidationError``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    UploadRequested,
    datetime_to_us,
    object_id_for,
)
from blobledger.schemas.permissions import PERMISSIONS

# --- limits (hard caps; infra/settings.py defaults to them) -----------------------------------
#: an object key, in UTF-8 bytes (as S3 counts a key)
MAX_KEY_BYTES = 1024
#: a metadata document or merge patch as compact JSON, in UTF-8 bytes; larger documents
#: belong in a blob
MAX_METADATA_BYTES = 64 * 1024
#: nested objects/arrays in a metadata document: ``{"a": 1}`` is 1 level, ``{"a": [1]}`` 2
MAX_METADATA_DEPTH = 8
#: digits of a metadata integer: Python's own limit on int <-> text, so every integer the
#: client writes is one the fold's parser reads back
MAX_INT_DIGITS = 4300
#: a declared or stored blob size: S3's own object limit, 5 TiB
MAX_BLOB_SIZE = 5 * 1024**4
#: the largest Avro long (an expected version beyond it cannot be written)
_MAX_LONG = 2**63 - 1
#: free text the read model shows (content type, a delete's reason), in UTF-8 bytes
MAX_CONTENT_TYPE_BYTES = 255
MAX_NOTE_BYTES = 1024
#: an upload source URI, in UTF-8 bytes
MAX_SOURCE_BYTES = 8192
#: the window of an event's ``occurred_at`` (microseconds since the epoch, UTC)
MIN_OCCURRED_AT = datetime_to_us(datetime(2000, 1, 1, tzinfo=UTC))
MAX_OCCURRED_AT = datetime_to_us(datetime(2100, 1, 1, tzinfo=UTC))  # exclusive
#: an upload's deadline lies within this many microseconds after its event
MAX_UPLOAD_WINDOW_US = 30 * 24 * 3600 * 1_000_000

#: the URI schemes an upload source may have (the worker's source policy decides the rest)
SOURCE_SCHEMES = ("file://", "http://", "https://")


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a value breaks the contract."""

    #: the fold's rejection reason (a stable code, the outcome's ``reason``)
    reason: str
    #: what is wrong and what is allowed, for a person (the client's ValidationError)
    message: str


# --- text ---------------------------------------------------------------------------------------
def _utf8_len(text: str) -> int | None:
    """The UTF-8 size of ``text``, or None when it holds a lone surrogate (no UTF-8 form:
    Avro, Postgres and the JSON the fold parses all refuse it)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _show(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message, escapes and all, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _text_violation(text: Any, what: str, reason: str, max_bytes: int) -> Violation | None:
    """Plain text: a string, no NUL, no lone surrogate, at most ``max_bytes``."""
    if not isinstance(text, str):
        return Violation(reason, f"{what} must be a string, not {type(text).__name__}")
    size = _utf8_len(text)
    if size is None:
        return Violation(reason, f"{what} {_show(text)} contains a lone surrogate (not UTF-8)")
    if "\x00" in text:
        return Violation(reason, f"{what} {_show(text)} contains a NUL character")
    if size > max_bytes:
        return Violation(reason, f"{what} is {size} bytes; the limit is {max_bytes}")
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


#: anything a key must not have: a control character, an empty, "." or ".." segment
#: (a leading "/" makes an empty first segment)
_KEY_TROUBLE = re.compile(r"[\x00-\x1f\x7f]|(?:\A|/)\.{0,2}(?:/|\Z)").search


def key_violation(key: Any, *, max_bytes: int = MAX_KEY_BYTES) -> Violation | None:
    """Object keys look like normalized paths: printable, no leading ``/``, no empty, ``.``
    or ``..`` segment, at most ``max_bytes`` of UTF-8."""
    if isinstance(key, str) and _KEY_TROUBLE(key) is None:
        size = _utf8_len(key)
        if size is not None and size <= max_bytes:
            return None
    return _key_violation(key, max_bytes)


def _key_violation(key: Any, max_bytes: int) -> Violation:
    """What is wrong with a key :func:`key_violation` refused, in words."""
    if not isinstance(key, str) or not key:
        return Violation("invalid_key", "object key must be a non-empty string")
    size = _utf8_len(key)
    if size is None:
        return Violation("invalid_key", f"object key {_show(key)} contains a lone surrogate")
    if size > max_bytes:
        return Violation("invalid_key", f"object key is {size} bytes; the limit is {max_bytes}")
    if _CONTROL.search(key):
        return Violation(
            "invalid_key",
            f"object key {_show(key)} contains control characters; use printable ones only",
        )
    if key[0] == "/":
        return Violation("invalid_key", f"object key {_show(key)} must not start with '/'")
    return Violation(
        "invalid_key",
        f"object key {_show(key)} has an empty, '.' or '..' segment; keys are normalized paths",
    )


def object_id_violation(object_id: str, tenant: str, key: str) -> Violation | None:
    """An object's id is derived from its tenant and key (:func:`object_id_for`), so a key
    names one object: a create under any other id would make a second object of that key."""
    expected = object_id_for(tenant, key)
    if object_id != expected:
        return Violation(
            "invalid_object_id",
            f"object id {object_id} is not the id of key {_show(key)} in tenant "
            f"{tenant!r} ({expected})",
        )
    return None


# --- names --------------------------------------------------------------------------------------
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}").fullmatch
_PRINCIPAL = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9._@:+-]{0,255}").fullmatch
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/=-]{0,127}").fullmatch
_SHA256 = re.compile(r"[0-9a-f]{64}").fullmatch


#: names that passed their check (tenants, actors, principals, tags; content types below):
#: the fold meets the same few on every event. A cache of a pure function, so it changes no
#: result; each set stops growing at 65536 names.
_GOOD_TENANTS: set[str] = set()
_GOOD_ACTORS: set[str] = set()
_GOOD_PRINCIPALS: set[str] = set()
_GOOD_TAGS: set[str] = set()


def _name_violation(
    name: Any, good: set[str], match: Callable[[str], Any], reason: str, rule: str
) -> Violation | None:
    if not isinstance(name, str) or not match(name):
        shown = _show(name) if isinstance(name, str) else repr(name)
        return Violation(reason, rule.format(shown))
    if len(good) < 65536:  # callers look a name up in ``good`` before calling
        good.add(name)
    return None


def tenant_violation(tenant: Any) -> Violation | None:
    if type(tenant) is str and tenant in _GOOD_TENANTS:
        return None
    return _name_violation(
        tenant,
        _GOOD_TENANTS,
        _TENANT,
        "invalid_tenant",
        "tenant {} is invalid: 1-64 letters, digits and ._@:+- , starting with a letter or digit",
    )


def principal_violation(principal: Any) -> Violation | None:
    """Whom an ACL entry names: ``*`` (everyone) or a user/service name."""
    if type(principal) is str and principal in _GOOD_PRINCIPALS:
        return None
    return _name_violation(
        principal,
        _GOOD_PRINCIPALS,
        _PRINCIPAL,
        "invalid_acl",
        "principal {} is invalid: use '*' or a user/service name (1-256 letters, digits and "
        "._@:+- , starting with a letter or digit)",
    )


def actor_violation(actor: Any) -> Violation | None:
    """Who acts: a principal's name; ``*`` names everyone in an ACL and cannot act."""
    if type(actor) is str and actor in _GOOD_ACTORS:
        return None
    if actor == "*":
        return Violation("invalid_actor", "'*' means everyone in an ACL; it cannot act")
    return _name_violation(
        actor,
        _GOOD_ACTORS,
        _PRINCIPAL,
        "invalid_actor",
        "actor {} is invalid: a user/service name (1-256 letters, digits and ._@:+- , "
        "starting with a letter or digit)",
    )


def tag_violation(tag: Any) -> Violation | None:
    if type(tag) is str and tag in _GOOD_TAGS:
        return None
    return _name_violation(
        tag,
        _GOOD_TAGS,
        _TAG,
        "invalid_tags",
        "tag {} is invalid: 1-128 characters of letters, digits and ._:/=- , "
        "starting with a letter or digit",
    )


def tags_violation(tags: Iterable[Any]) -> Violation | None:
    for t in tags:
        if (bad := tag_violation(t)) is not None:
            return bad
    return None


def permissions_violation(permissions: Iterable[Any]) -> Violation | None:
    bad = sorted({repr(p) for p in permissions if not (type(p) is str and p in PERMISSIONS)})
    if bad:
        return Violation(
            "invalid_acl",
            f"unknown permissions {', '.join(bad)}; allowed: {', '.join(sorted(PERMISSIONS))}",
        )
    return None


# --- numbers and times --------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def expected_version_violation(v: Any) -> Violation | None:
    if v is not None and (not _is_int(v) or not 0 <= v <= _MAX_LONG):
        return Violation(
            "invalid_version",
            f"expected_version must be an integer from 0 to {_MAX_LONG}, not {v!r}",
        )
    return None


def sha256_violation(value: Any, what: str = "sha256") -> Violation | None:
    """A SHA-256 as the read model keys blobs by it: 64 lowercase hex digits."""
    if not isinstance(value, str) or not _SHA256(value):
        shown = _show(value) if isinstance(value, str) else repr(value)
        return Violation("invalid_sha256", f"{what} {shown} is not 64 lowercase hex digits")
    return None


def size_violation(
    size: Any, what: str = "size", *, max_size: int = MAX_BLOB_SIZE
) -> Violation | None:
    if not _is_int(size) or size < 0:
        return Violation("invalid_size", f"{what} must be a non-negative integer, not {size!r}")
    if size > max_size:
        return Violation("invalid_size", f"{what} {size} exceeds the limit of {max_size} bytes")
    return None


def occurred_at_violation(us: Any) -> Violation | None:
    if not _is_int(us) or not MIN_OCCURRED_AT <= us < MAX_OCCURRED_AT:
        return Violation(
            "invalid_time",
            f"occurred_at {us!r} (microseconds since 1970) is not in 2000..2099: "
            "is this machine's clock right?",
        )
    return None


def deadline_violation(deadline: Any, occurred_at: int) -> Violation | None:
    if not _is_int(deadline) or not 0 <= deadline - occurred_at <= MAX_UPLOAD_WINDOW_US:
        return Violation(
            "invalid_deadline",
            f"upload deadline {deadline!r} is not 0 to {MAX_UPLOAD_WINDOW_US // 86_400_000_000} "
            f"days after its event ({occurred_at}); see BLOBLEDGER_UPLOAD_DEADLINE_SECONDS",
        )
    return None


# --- free text ----------------------------------------------------------------------------------
_GOOD_CONTENT_TYPES: set[str] = set()


def content_type_violation(value: Any) -> Violation | None:
    if value is None or (type(value) is str and value in _GOOD_CONTENT_TYPES):
        return None
    if bad := _text_violation(
        value, "content type", "invalid_content_type", MAX_CONTENT_TYPE_BYTES
    ):
        return bad
    if not value or _CONTROL.search(value):
        return Violation(
            "invalid_content_type",
            f"content type {_show(value)} is empty or has control characters",
        )
    if len(_GOOD_CONTENT_TYPES) < 65536:
        _GOOD_CONTENT_TYPES.add(value)
    return None


def note_violation(value: Any, what: str = "reason") -> Violation | None:
    """Free text kept with an event (a delete's reason)."""
    if value is None:
        return None
    return _text_violation(value, what, "invalid_note", MAX_NOTE_BYTES)


def source_violation(value: Any) -> Violation | None:
    """An upload source as the event carries it: a file, http or https URI."""
    if bad := _text_violation(value, "source", "invalid_source", MAX_SOURCE_BYTES):
        return bad
    if not value.startswith(SOURCE_SCHEMES) or _CONTROL.search(value):
        return Violation(
            "invalid_source",
            f"source {_show(value)} is not a file://, http:// or https:// URI "
            "without control characters",
        )
    return None


# --- metadata -------------------------------------------------------------------------------------
def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{_show(key)}]"


def _value_violation(value: Any, depth: int, max_depth: int, path: str) -> Violation | None:
    if value is None or value is True or value is False:
        return None
    if isinstance(value, str):
        if "\x00" in value:
            return Violation("invalid_metadata", f"metadata text at {path} contains a NUL")
        if _utf8_len(value) is None:
            return Violation(
                "invalid_metadata", f"metadata text at {path} contains a lone surrogate"
            )
        return None
    if isinstance(value, int):
        if isinstance(value, bool) or -_INT_BOUND < value < _INT_BOUND:
            return None
        return Violation(
            "invalid_metadata", f"metadata integer at {path} has more than {MAX_INT_DIGITS} digits"
        )
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return Violation(
            "invalid_metadata", f"metadata number at {path} is not finite (NaN/inf are not JSON)"
        )
    if isinstance(value, (dict, list, tuple)):
        if depth >= max_depth:
            return Violation(
                "invalid_metadata", f"metadata nests deeper than {max_depth} levels at {path}"
            )
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    return Violation(
                        "invalid_metadata", f"metadata key {k!r} at {path} is not a string"
                    )
                where = _child(path, k)
                if "\x00" in k or _utf8_len(k) is None:
                    return Violation(
                        "invalid_metadata",
                        f"metadata key {_show(k)} at {path} contains a NUL or a lone surrogate",
                    )
                if bad := _value_violation(v, depth + 1, max_depth, where):
                    return bad
        else:
            for i, v in enumerate(value):
                if bad := _value_violation(v, depth + 1, max_depth, f"{path}[{i}]"):
                    return bad
        return None
    return Violation(
        "invalid_metadata",
        f"metadata value at {path} has type {type(value).__name__}; allowed: "
        "str, int, float, bool, None, list, dict",
    )


_INT_BOUND = 10**MAX_INT_DIGITS


def metadata_violation(value: Any, *, max_depth: int = MAX_METADATA_DEPTH) -> Violation | None:
    """What is wrong with a metadata document (or merge patch) given as Python values:
    the first violation, naming where it is (``$.a[2]``). Text must be storable (no NUL,
    no lone surrogate, in keys and values alike), numbers finite."""
    if not isinstance(value, dict):
        return Violation(
            "invalid_metadata",
            f"metadata must be a JSON object (a dict), not {type(value).__name__}",
        )
    return _value_violation(value, 0, max_depth, "$")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which jsonb cannot hold
        raise ValueError(f"{text} is out of range")
    return value


#: strict JSON: NaN, Infinity and numbers that overflow a float are refused
_decode_json = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite).decode


def parse_metadata(
    text: str, *, max_bytes: int = MAX_METADATA_BYTES, max_depth: int = MAX_METADATA_DEPTH
) -> dict[str, Any] | Violation:
    """The JSON object in ``text`` (a document or a merge patch, as an event carries it),
    or why the contract refuses it.

    The hot path of the fold: the walk of :func:`metadata_violation` runs only when the
    text could break a rule the parser does not enforce (more brackets than the depth
    allows, or a ``\\u`` escape, the only way NUL or a lone surrogate gets past the
    parser, which refuses raw control characters)."""
    size = len(text) if text.isascii() else _utf8_len(text)
    if size is None:
        return Violation("invalid_metadata", "metadata contains a lone surrogate")
    if size > max_bytes:
        return Violation(
            "invalid_metadata",
            f"metadata is {size} bytes as JSON; the limit is {max_bytes}. "
            "Store large documents as a blob instead",
        )
    try:
        value = _decode_json(text)
    except (ValueError, RecursionError) as e:
        return Violation("invalid_metadata", f"metadata is not JSON: {e}")
    if not isinstance(value, dict):
        return Violation("invalid_metadata", "metadata must be a JSON object")
    if "\\u" in text or text.count("{") + text.count("[") > max_depth:
        try:
            bad = metadata_violation(value, max_depth=max_depth)
        except RecursionError:
            bad = Violation("invalid_metadata", "metadata nests too deeply")
        if bad:
            return bad
    return value


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def metadata_too_large(document: dict[str, Any], max_bytes: int = MAX_METADATA_BYTES) -> bool:
    """True when ``document`` as compact JSON, as the json module writes it (what the
    client measures), takes more than ``max_bytes`` of UTF-8: the bound on a document that
    merge patches add up to."""
    try:
        # orjson writes the same text but for a float exponent's zero ("1e-7" for
        # "1e-07"): 15x faster, and far below the limit that cannot change the answer
        if len(orjson.dumps(document)) <= max_bytes // 2:
            return False
    except TypeError:  # integers beyond 64 bits
        pass
    text = _encode_json(document)
    return (len(text) if text.isascii() else len(text.encode("utf-8"))) > max_bytes


# --- whole events ---------------------------------------------------------------------------------
def envelope_violation(env: Envelope) -> Violation | None:
    t, v = env.occurred_at, env.expected_version
    if (  # the fold's hot path: names seen before, plain numbers in range
        env.tenant in _GOOD_TENANTS
        and env.actor in _GOOD_ACTORS
        and type(t) is int
        and MIN_OCCURRED_AT <= t < MAX_OCCURRED_AT
        and (v is None or (type(v) is int and 0 <= v <= _MAX_LONG))
    ):
        return None
    return (
        tenant_violation(env.tenant)
        or actor_violation(env.actor)
        or occurred_at_violation(t)
        or expected_version_violation(v)
    )


def _created(e: ObjectCreated) -> Violation | None:
    env = e.envelope
    return (
        key_violation(e.key)
        or object_id_violation(env.object_id, env.tenant, e.key)
        or tags_violation(e.tags)
        or content_type_violation(e.content_type)
    )


def _tags_changed(e: TagsChanged) -> Violation | None:
    if not e.added and not e.removed:
        return Violation("invalid_tags", "a tag change adds or removes at least one tag")
    return tags_violation(e.added) or tags_violation(e.removed)


def _acl_changed(e: AclChanged) -> Violation | None:
    return principal_violation(e.principal) or permissions_violation(e.permissions)


def _deleted(e: ObjectDeleted) -> Violation | None:
    return note_violation(e.reason)


def _upload(e: BlobAttached | UploadRequested) -> Violation | None:
    sha, size = e.declared_sha256, e.declared_size
    return (
        source_violation(e.source)
        or deadline_violation(e.deadline, e.envelope.occurred_at)
        or (None if sha is None else sha256_violation(sha, "declared sha256"))
        or (None if size is None else size_violation(size, "declared size"))
        or content_type_violation(e.content_type)
    )


def _stored(e: BlobStored) -> Violation | None:
    return sha256_violation(e.sha256) or size_violation(e.size)


def _document(e: Event) -> str | None:
    if type(e) is MetadataUpdated:
        return e.patch_json
    if type(e) is ObjectCreated:
        return e.metadata_json
    return None


#: the fields each event type adds to the envelope's rules
_RULES: dict[type[Event], Callable[[Any], Violation | None]] = {
    ObjectCreated: _created,
    TagsChanged: _tags_changed,
    AclChanged: _acl_changed,
    ObjectDeleted: _deleted,
    BlobAttached: _upload,
    UploadRequested: _upload,
    BlobStored: _stored,
}


def event_violation(event: Event, *, documents: bool = True) -> Violation | None:
    """The first way ``event`` breaks the contract, or None. ``documents=False`` leaves
    the metadata text to the caller (the fold parses it anyway, with
    :func:`parse_metadata`). State-dependent rules (the object exists, the actor may act,
    the merged document's size) are the fold's."""
    bad = envelope_violation(event.envelope)
    if bad is None and (rules := _RULES.get(type(event))) is not None:
        bad = rules(event)
    if bad is None and documents and (text := _document(event)) is not None:
        parsed = parse_metadata(text)
        if isinstance(parsed, Violation):
            bad = parsed
    return bad
