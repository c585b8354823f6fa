"""Codec: every schema round-trips; older writer schemas resolve; bad bytes raise typed errors."""

import contextlib
import json

import pytest
from fastavro import parse_schema

from blobledger.schemas.codec import (
    AVRO_DIR,
    HEADER_LEN,
    MAGIC,
    Codec,
    SchemaVersion,
    _fingerprint,
    _inline,
    _load_json,
)
from blobledger.schemas.errors import CodecError, TruncatedMessageError, UnknownSchemaError
from blobledger.schemas.events import (
    EVENT_TYPES,
    AclChanged,
    BlobAttached,
    BlobStored,
    BlobUploadFailed,
    Envelope,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    UploadRequested,
    new_id,
)

ENV = Envelope(object_id=new_id(), actor="alice", expected_version=3, causation_id=new_id())
SAMPLES = [
    ObjectCreated(
        ENV, key="a/b.txt", metadata_json='{"x":1}', tags=["t1", "t2"], content_type="text/plain"
    ),
    MetadataUpdated(ENV, patch_json='{"x":null}'),
    TagsChanged(ENV, added=["a"], removed=["b"]),
    AclChanged(ENV, principal="bob", permissions=["read"]),
    ObjectDeleted(ENV, reason="cleanup"),
    BlobAttached(
        ENV,
        upload_id=new_id(),
        source="file:///x",
        declared_sha256="ab" * 32,
        declared_size=5,
        deadline=123,
    ),
    BlobStored(
        ENV,
        upload_id=new_id(),
        sha256="cd" * 32,
        size=10,
        key="blobs/sha256/cd/x",
        dedup=True,
        duration_ms=4,
        part_count=1,
    ),
    BlobUploadFailed(ENV, upload_id=new_id(), reason="timeout", detail="deadline passed"),
    UploadRequested(ENV, upload_id=new_id(), source="https://example.invalid/x", deadline=99),
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def test_every_event_type_has_a_sample():
    assert {type(s).schema_name for s in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(codec, event):
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert data[2:HEADER_LEN] == codec.current[event.schema_name].fingerprint
    assert codec.decode(data) == event


def test_fingerprint_is_crc64_avro_of_canonical_form():
    # the spec's example: the fingerprint of "int" is 0x7275d51a3f395c8f, sent little-endian
    assert _fingerprint(parse_schema("int")) == bytes.fromhex("8f5c393f1ad57572")


def test_event_written_with_older_schema_is_read_with_current(codec):
    named = {"blobledger.Envelope": _load_json(AVRO_DIR / "Envelope.avsc")}
    v1 = parse_schema(_inline(_load_json(AVRO_DIR / "history" / "ObjectCreated.v1.avsc"), named))
    old = SchemaVersion("blobledger.ObjectCreated", _fingerprint(v1), v1, AVRO_DIR)
    assert old.fingerprint != codec.current["blobledger.ObjectCreated"].fingerprint
    record = SAMPLES[0].to_record()
    del record["content_type"]  # the v1 writer had no such field
    data = Codec.encode_with(old, record)
    decoded = codec.decode(data)
    assert isinstance(decoded, ObjectCreated)
    assert decoded.key == "a/b.txt" and decoded.tags == ["t1", "t2"]
    assert decoded.content_type is None  # filled from the reader's default


def test_unknown_fingerprint(codec):
    data = bytearray(codec.encode(SAMPLES[1]))
    data[2:HEADER_LEN] = b"\x00" * 8
    with pytest.raises(UnknownSchemaError):
        codec.decode(bytes(data))


@pytest.mark.parametrize("data", [None, b"", b"\xc3", b"\xc3\x01\x00\x00"])
def test_short_messages(codec, data):
    with pytest.raises(TruncatedMessageError):
        codec.decode(data)


def test_truncated_body(codec):
    data = codec.encode(SAMPLES[0])
    with pytest.raises(CodecError):
        codec.decode(data[:-5])


def test_trailing_garbage(codec):
    with pytest.raises(CodecError):
        codec.decode(codec.encode(SAMPLES[1]) + b"junk")


def test_not_single_object_encoding(codec):
    with pytest.raises(CodecError):
        codec.decode(json.dumps({"hello": "world"}).encode())


def test_random_garbage_never_crashes(codec):
    import random

    rnd = random.Random(7)
    valid = codec.encode(SAMPLES[0])
    for _ in range(500):
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 60)))
        with contextlib.suppress(CodecError):
            codec.decode(valid[:HEADER_LEN] + body)
