"""Avro single-object encoding of events, with writer-schema resolution by fingerprint.

Message value = ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's Parsing Canonical Form + the Avro binary body. The decoder looks the
fingerprint up among every schema it knows (current and historical, ``avro/history``)
and reads the body with the *current* schema of that record name, so Avro's resolution
rules (defaults for added fields, ignored removed fields) apply. No Kafka imports here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from blobledger.schemas.errors import CodecError, TruncatedMessageError, UnknownSchemaError
from blobledger.schemas.events import EVENT_TYPES, Event

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
AVRO_DIR = Path(__file__).parent / "avro"


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    fingerprint: bytes
    parsed: Any
    path: Path


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _inline(schema: Any, named: dict[str, Any]) -> Any:
    """Replace references to shared named types (the Envelope) by their definition, so
    every event schema is self-contained and its canonical form (and fingerprint) is
    computed over the whole record."""
    if isinstance(schema, str):
        return named.get(schema, schema)
    if isinstance(schema, list):
        return [_inline(s, named) for s in schema]
    if isinstance(schema, dict):
        return {
            k: (_inline(v, named) if k in ("type", "items", "values", "fields") else v)
            for k, v in schema.items()
        }
    return schema


def _parse(schema: dict[str, Any]) -> Any:
    return parse_schema(schema)


def _fingerprint(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class Codec:
    """Encodes and decodes every event type; thread-safe after construction."""

    def __init__(self, avro_dir: Path = AVRO_DIR) -> None:
        envelope = _load_json(avro_dir / "Envelope.avsc")
        named = {"blobledger.Envelope": envelope}
        self.current: dict[str, SchemaVersion] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in sorted(avro_dir.glob("*.avsc")):
            if path.name == "Envelope.avsc":
                continue
            self._register(path, named, current=True)
        for path in sorted((avro_dir / "history").glob("*.avsc")):
            self._register(path, named, current=False)
        missing = set(EVENT_TYPES) - set(self.current)
        if missing:
            raise CodecError(f"event types without a schema file: {sorted(missing)}")

    def _register(self, path: Path, named: dict[str, Any], *, current: bool) -> None:
        parsed = _parse(_inline(_load_json(path), named))
        name = parsed["name"]
        version = SchemaVersion(name, _fingerprint(parsed), parsed, path)
        if current:
            self.current[name] = version
        self.by_fingerprint[version.fingerprint] = version

    # -----------------------------------------------------------------------------------
    def encode(self, event: Event) -> bytes:
        return self.encode_record(event.schema_name, event.to_record())

    def encode_record(self, name: str, record: dict[str, Any]) -> bytes:
        """Encode a plain record with the current schema of ``name`` (or a historical one
        given as ``writer`` by tests of schema evolution)."""
        return self.encode_with(self.current[name], record)

    @staticmethod
    def encode_with(version: SchemaVersion, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(version.fingerprint)
        try:
            schemaless_writer(buf, version.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            raise CodecError(f"record does not fit schema {version.name}: {e}") from e
        return buf.getvalue()

    def decode(self, data: bytes | None) -> Event:
        name, record = self.decode_record(data)
        try:
            return EVENT_TYPES[name].from_record(record)
        except (TypeError, KeyError, ValueError) as e:
            raise CodecError(f"{name} record does not map onto its event type: {e}") from e

    def decode_record(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        if data is None or len(data) < HEADER_LEN:
            raise TruncatedMessageError(
                f"message of {0 if data is None else len(data)} bytes is shorter than the "
                f"{HEADER_LEN}-byte single-object header"
            )
        if data[:2] != MAGIC:
            raise CodecError(
                f"not Avro single-object encoding (marker {data[:2].hex()}, expected c301)"
            )
        writer = self.by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if writer is None:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_LEN]).hex()}; "
                "upgrade blobledger to a version that knows it"
            )
        reader = self.current[writer.name]
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            record = schemaless_reader(
                body, writer.parsed, None if reader is writer else reader.parsed
            )
        except (EOFError, StopIteration) as e:
            raise TruncatedMessageError(f"{writer.name} body ends early: {e}") from e
        except Exception as e:  # fastavro raises assorted types on corrupt bodies
            raise CodecError(f"cannot decode {writer.name} body: {type(e).__name__}: {e}") from e
        if body.tell() != len(data) - HEADER_LEN:
            raise CodecError(
                f"{writer.name} body has {len(data) - HEADER_LEN - body.tell()} trailing bytes"
            )
        if not isinstance(record, dict):  # every event schema is a record
            raise CodecError(f"{writer.name} body is a {type(record).__name__}, not a record")
        return writer.name, record


@lru_cache(maxsize=1)
def default_codec() -> Codec:
    return Codec()
