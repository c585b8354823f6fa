"""COPY text format: the read model's rows as tab-separated lines, written one buffer per table.

psycopg's per-value ``write_row`` dumpers cost more than the fold itself, so the projector
formats lines here (``\\N`` for NULL, backslash escapes) and hands whole buffers to COPY.
Each ``*_COLUMNS`` tuple is the column order of the matching ``*_line`` function.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from blobledger.projectors.fold import ObjectState, Upload

if TYPE_CHECKING:  # rows.py needs TextCache at run time; these are annotations only
    from blobledger.projectors.rows import OutcomeRow, VersionRow

OBJECT_COLUMNS = (
    "object_id",
    "tenant",
    "key",
    "version",
    "metadata",
    "tags",
    "content_type",
    "deleted",
    "acl",
    "blob_sha256",
    "blob_size",
    "blob_key",
    "blob_upload_id",
    "pending_upload_id",
    "created_at",
    "updated_at",
)
#: the state both an object row and each of its version snapshots carry, in COPY order
STATE_COLUMNS = (
    "key",
    "metadata",
    "tags",
    "content_type",
    "deleted",
    "acl",
    "blob_sha256",
    "blob_size",
    "blob_key",
    "blob_upload_id",
    "pending_upload_id",
)
VERSION_COLUMNS = (
    "object_id",
    "version",
    "event_id",
    "event_type",
    "actor",
    "occurred_at",
    "correlation_id",
    *STATE_COLUMNS,
)
OUTCOME_COLUMNS = (
    "event_id",
    "object_id",
    "event_type",
    "tenant",
    "actor",
    "status",
    "reason",
    "version",
    "correlation_id",
    "occurred_at",
    "log_partition",
    "log_offset",
)
UPLOAD_COLUMNS = (
    "upload_id",
    "object_id",
    "state",
    "source",
    "requested_version",
    "requested_at",
    "deadline",
    "declared_sha256",
    "declared_size",
    "sha256",
    "size",
    "key",
    "dedup",
    "reason",
    "finished_at",
)
#: column order of :func:`object_line` (identity columns first, then the shared state)
OBJECT_COPY_COLUMNS = (
    "object_id",
    "tenant",
    "version",
    "created_at",
    "updated_at",
    *STATE_COLUMNS,
)
UPLOAD_COPY_COLUMNS = UPLOAD_COLUMNS
ACL_COLUMNS = ("object_id", "principal", "permission")


# --- values -----------------------------------------------------------------------------------
def _e(s: str) -> str:
    """Escape a string for COPY text format (backslash, tab, newline, carriage return)."""
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        return (
            s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        )
    return s


def _en(s: str | None) -> str:
    return "\\N" if s is None else _e(s)


def _in(i: int | None) -> str:
    return "\\N" if i is None else str(i)


def _b(v: bool) -> str:
    return "t" if v else "f"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS: dict[int, str] = {}


def _ts(us: int) -> str:
    """A timestamptz literal for microseconds since the epoch (exact; per-second cache)."""
    sec, frac = divmod(us, 1_000_000)
    base = _SECONDS.get(sec)
    if base is None:
        if not 0 <= sec < 253402300800:  # outside 1970..9999: let datetime format (or refuse)
            return (_EPOCH + timedelta(microseconds=us)).isoformat()
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        base = _SECONDS[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    return f"{base}.{frac:06d}+00"


def _tsn(us: int | None) -> str:
    return "\\N" if us is None else _ts(us)


def _array_item(t: str) -> str:
    return '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _stdlib_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


try:  # ~10x faster than the json module; measured: JSON text was ~30% of the apply CPU
    import orjson

    def dumps(value: Any) -> str:
        """Canonical JSON text (sorted keys, no spaces) of a metadata or ACL value."""
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # integers beyond 64 bits, lone surrogates: the json module copes
            return _stdlib_dumps(value)

    def loads(text: str) -> Any:
        """Parse JSON text read back from Postgres."""
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    dumps = _stdlib_dumps

    def loads(text: str) -> Any:
        """Parse JSON text read back from Postgres."""
        return json.loads(text)


def _acl_json(acl: Mapping[str, frozenset[str]]) -> str:
    return dumps({p: sorted(perms) for p, perms in sorted(acl.items())})


class TextCache:
    """COPY-ready text of values shared between rows (metadata, ACL, tags), computed once
    per distinct value object rather than once per row. Keyed by identity: the fold never
    mutates a value, it makes a new one, so an unchanged object keeps its text. Holding the
    value keeps its id from being reused while the cache lives (one batch)."""

    __slots__ = ("_m", "_states")

    def __init__(self) -> None:
        self._m: dict[int, tuple[Any, str]] = {}
        self._states: dict[int, tuple[Any, str]] = {}

    def put_json(self, value: Any, json_text: str) -> None:
        """Remember the JSON text ``value`` was parsed from (a loaded state's metadata or
        ACL), so writing the value back does not serialize it again."""
        self._m[id(value)] = (value, _e(json_text))

    def metadata(self, m: Mapping[str, Any]) -> str:
        hit = self._m.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        text = _e(dumps(m))
        self._m[id(m)] = (m, text)
        return text

    def acl(self, acl: Mapping[str, frozenset[str]]) -> str:
        hit = self._m.get(id(acl))
        if hit is not None and hit[0] is acl:
            return hit[1]
        text = _e(_acl_json(acl))
        self._m[id(acl)] = (acl, text)
        return text

    def tags(self, tags: Sequence[str]) -> str:
        hit = self._m.get(id(tags))
        if hit is not None and hit[0] is tags:
            return hit[1]
        joined = '","'.join(tags)
        if "\\" in joined or '"' in joined:
            text = _e("{" + ",".join(map(_array_item, tags)) + "}")
        else:
            text = _e('{"' + joined + '"}') if tags else "{}"
        self._m[id(tags)] = (tags, text)
        return text


# --- lines ------------------------------------------------------------------------------------
def _state_text(s: ObjectState, texts: TextCache) -> str:
    """The columns an object row and a version snapshot share, from ``key`` on (cached:
    a batch's last version snapshot of an object is also its object row)."""
    hit = texts._states.get(id(s))
    if hit is not None and hit[0] is s:
        return hit[1]
    text = _state_text_uncached(s, texts)
    texts._states[id(s)] = (s, text)
    return text


def _state_text_uncached(s: ObjectState, texts: TextCache) -> str:
    # ids are canonical UUID text (the decoder refuses anything else): nothing to escape
    b = s.blob
    blob = (
        f"{_e(b.sha256)}\t{b.size}\t{_e(b.key)}\t{b.upload_id}"
        if b is not None
        else "\\N\t\\N\t\\N\t\\N"
    )
    pending = s.pending_upload_id or "\\N"
    return (
        f"{_e(s.key)}\t{texts.metadata(s.metadata)}\t{texts.tags(s.tags)}\t{_en(s.content_type)}\t"
        f"{'t' if s.deleted else 'f'}\t{texts.acl(s.acl)}\t{blob}\t{pending}"
    )


def object_line(s: ObjectState, texts: TextCache) -> str:
    """OBJECT_COPY_COLUMNS as a COPY text line."""
    return (
        f"{s.object_id}\t{_e(s.tenant)}\t{s.version}\t{_ts(s.created_at)}\t{_ts(s.updated_at)}\t"
        f"{_state_text(s, texts)}\n"
    )


def version_line(row: VersionRow, texts: TextCache) -> str:
    """VERSION_COLUMNS as a COPY text line."""
    object_id, version, event_id, event_type, actor, occurred_at, correlation_id, s = row
    return (
        f"{object_id}\t{version}\t{event_id}\t{event_type}\t{_e(actor)}\t"
        f"{_ts(occurred_at)}\t{_e(correlation_id)}\t{_state_text(s, texts)}\n"
    )


def outcome_line(r: OutcomeRow) -> str:
    """OUTCOME_COLUMNS as a COPY text line."""
    (
        event_id,
        object_id,
        event_type,
        tenant,
        actor,
        status,
        reason,
        version,
        correlation_id,
        occurred_at,
        partition,
        offset,
    ) = r
    return (
        f"{event_id}\t{object_id}\t{event_type}\t{_e(tenant)}\t{_e(actor)}\t{status}\t"
        f"{_en(reason)}\t{version}\t{_e(correlation_id)}\t{_ts(occurred_at)}\t{partition}\t"
        f"{offset}\n"
    )


def upload_line(u: Upload) -> str:
    """UPLOAD_COPY_COLUMNS as a COPY text line."""
    return (
        f"{u.upload_id}\t{u.object_id}\t{u.state.value}\t{_e(u.source)}\t{u.requested_version}\t"
        f"{_ts(u.requested_at)}\t{_ts(u.deadline)}\t{_en(u.declared_sha256)}\t"
        f"{_in(u.declared_size)}\t{_en(u.sha256)}\t{_in(u.size)}\t{_en(u.key)}\t{_b(u.dedup)}\t"
        f"{_en(u.reason)}\t{_tsn(u.finished_at)}\n"
    )


def acl_line(object_id: str, principal: str, permission: str) -> str:
    """ACL_COLUMNS as a COPY text line."""
    return f"{_e(object_id)}\t{_e(principal)}\t{_e(permission)}\n"
