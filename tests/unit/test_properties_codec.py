"""Properties of the codec (schemas/codec.py): every event type round-trips, and no bytes,
however broken, raise anything but a CodecError (the projector dead-letters those)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blobledger.schemas.codec import HEADER_LEN, MAGIC, default_codec
from blobledger.schemas.errors import CodecError
from blobledger.schemas.events import EVENT_TYPES, MAX_US, MIN_US, Envelope, Event

FAST = settings(max_examples=150, deadline=None)
codec = default_codec()

INT64 = st.integers(-(2**63), 2**63 - 1)
#: text the decoder takes back: UTF-8 (no lone surrogates), no NUL, short enough for
#: every index limit (schemas/events.py TEXT_LIMITS) even at 4 bytes a character
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
#: text the Avro types allow but the decoder may refuse
ANY_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "\ud800", "not-a-uuid", "A" * 3000, "é" * 700]),
)
UUIDS = st.uuids().map(str)
#: per field name, what a decodable value looks like (the rest follows the field's type)
DECODABLE: dict[str, st.SearchStrategy[Any]] = {
    "event_id": UUIDS,
    "object_id": UUIDS,
    "correlation_id": UUIDS,
    "upload_id": UUIDS,
    "occurred_at": st.integers(MIN_US, MAX_US),
    "deadline": st.integers(MIN_US, MAX_US),
    "part_count": st.integers(-(2**31), 2**31 - 1),
}
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": TEXT,
    "int": INT64,
    "bool": st.booleans(),
    "list[str]": st.lists(TEXT, max_size=4),
}


def _value(name: str, annotation: str, text: st.SearchStrategy[str], decodable: bool) -> Any:
    plain = annotation.removesuffix(" | None")
    if decodable and name in DECODABLE:
        base = DECODABLE[name]
    elif plain == "str":
        base = text
    elif plain == "list[str]":
        base = st.lists(text, max_size=4)
    elif plain == "int" and not decodable:
        # beyond a long, which Avro cannot hold
        base = st.one_of(INT64, st.sampled_from([2**63, -(2**63) - 1, 2**64, -(10**30)]))
    else:
        base = BY_TYPE[plain]
    return st.one_of(st.none(), base) if annotation.endswith(" | None") else base


def events(text: st.SearchStrategy[str] = TEXT, decodable: bool = True) -> st.SearchStrategy[Event]:
    """Any event of any type, its fields drawn by their annotations (so a new event type
    or field is covered without touching this file); ``decodable`` keeps ids and times to
    what the decoder takes."""

    def of(cls: type[Any]) -> st.SearchStrategy[Any]:
        kwargs = {
            f.name: _value(f.name, str(f.type), text, decodable)
            for f in fields(cls)
            if f.name != "envelope"
        }
        if cls is not Envelope:
            kwargs["envelope"] = of(Envelope)
        return st.builds(cls, **kwargs)

    return st.one_of([of(cls) for cls in EVENT_TYPES.values()])


@FAST
@given(events())
def test_every_event_type_round_trips(event: Event) -> None:
    assert codec.decode(codec.encode(event)) == event


@FAST
@given(events(text=ANY_TEXT, decodable=False))
def test_what_encodes_decodes_to_itself_or_to_a_codec_error(event: Event) -> None:
    """Any value the Avro types let through: encoding refuses it (lone surrogates) or the
    decoder refuses it (NUL, ids, sizes), both as CodecError, or it comes back unchanged."""
    try:
        data = codec.encode(event)
    except CodecError:
        return
    try:
        decoded = codec.decode(data)
    except CodecError:
        return
    assert decoded == event


def _decodes_or_codec_error(data: bytes) -> None:
    try:
        decoded = codec.decode(data)
    except CodecError:
        return
    assert isinstance(decoded, Event)


@FAST
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_codec_errors(data: bytes) -> None:
    _decodes_or_codec_error(data)


@FAST
@given(st.sampled_from(sorted(codec.by_fingerprint)), st.binary(max_size=300))
def test_a_known_header_over_garbage_raises_only_codec_errors(fp: bytes, body: bytes) -> None:
    _decodes_or_codec_error(MAGIC + fp + body)


@FAST
@given(events(), st.data())
def test_damaged_messages_raise_only_codec_errors(event: Event, data: st.DataObject) -> None:
    good = bytearray(codec.encode(event))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(good) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "body"]))
        if how == "flip":
            good[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del good[at:]
        elif how == "insert":
            good[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:  # keep the header, replace the body
            good[HEADER_LEN:] = data.draw(st.binary(max_size=64))
        if not good:
            break
    _decodes_or_codec_error(bytes(good))
