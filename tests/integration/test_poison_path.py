"""Poison input on a real topic: records that fit the Avro types but not the read model
(garbage ids, NUL characters, a key too large for its index) are dead-lettered with error
headers, the projector keeps folding, and a replay folds the same log to the same tables
without dead-lettering anything twice."""

from __future__ import annotations

import secrets

import pytest

from blobledger import connect
from blobledger.infra.dlq import list_dead_letters
from blobledger.projectors.lag import projection_lag, wait_caught_up
from blobledger.projectors.rebuild import replay
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import (
    BlobAttached,
    Envelope,
    MetadataUpdated,
    ObjectCreated,
    TagsChanged,
    new_id,
    object_id_for,
)

from .support import ThreadedProjector, publish_all

pytestmark = pytest.mark.integration


def _env(key: str, actor: str = "alice", **kw) -> Envelope:
    return Envelope(object_id=object_id_for("default", key), actor=actor, **kw)


def test_poison_records_are_dead_lettered_and_later_events_applied(settings):
    good = [ObjectCreated(_env("p/a"), key="p/a", metadata_json='{"n":0}')]
    poison = [  # each decodes under its Avro schema, none can be stored
        ObjectCreated(Envelope(object_id="o1", actor="alice"), key="p/o1"),
        ObjectCreated(_env("p/b", event_id="not-a-uuid"), key="p/b"),
        BlobAttached(_env("p/a"), upload_id="u-1", source="file:///x", deadline=1),
        ObjectCreated(_env("p/c", actor="al\x00ice"), key="p/c"),
        TagsChanged(_env("p/a"), added=["ok", "n\x00l"]),
        ObjectCreated(_env("p/d"), key="p/d\x00"),
        ObjectCreated(_env("p/huge"), key="p/huge/" + secrets.token_hex(16_000)),  # > its index
    ]
    # valid JSON with an escaped NUL: the fold rejects it (an outcome, not a dead letter)
    nul_json = MetadataUpdated(_env("p/a", expected_version=1), patch_json='{"x":"\\u0000"}')
    later = [
        MetadataUpdated(_env("p/a", expected_version=1), patch_json='{"n":1}'),
        ObjectCreated(_env("p/later"), key="p/later"),
    ]

    publish_all(settings, good)
    publish_all(settings, poison)
    publish_all(settings, [nul_json, *later])

    p = ThreadedProjector(settings)
    try:
        wait_caught_up(settings, timeout=120)
        assert projection_lag(settings) == 0
        with connect(settings, actor="alice") as c:
            a = c.get("p/a")
            assert a.version == 2 and a.metadata == {
                "n": 1
            }  # the NUL patch was rejected, n=1 applied
            assert c.get("p/later").version == 1  # folded after the poison
        letters = list_dead_letters(settings)
        assert len(letters) == len(poison)
        assert all(d.error and d.source_topic == settings.events_topic for d in letters)
        assert [d.error_code for d in letters] == ["codec"] * len(poison)
        assert p.projector.totals.dead_letters == len(poison)
    finally:
        p.stop()
    # a replay meets the same poison and folds the same tables; the DLQ holds it already
    # (7 letters stay 7: a record is dead-lettered once)
    report = replay(settings, verify=True, swap=False, progress=False)
    assert report.verified, report.differences
    assert (report.dead_letters, report.dead_letters_sent) == (len(poison), 0)
    assert len(list_dead_letters(settings)) == len(poison)


def test_records_postgres_refuses_are_bisected_out(settings):
    """A record that decodes and folds but that the database refuses (here: a CHECK
    constraint the decoder knows nothing about) fails its batch; the batch is bisected, the
    record dead-lettered (code ``unstorable``) and every other record folded."""
    import psycopg

    p = ThreadedProjector(settings)  # migrates the schema
    try:
        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            conn.execute(
                f"ALTER TABLE {settings.read_model_schema}.objects "
                "ADD CONSTRAINT test_refuses CHECK (key NOT LIKE 'p/refused%')"
            )
        events = [ObjectCreated(_env(f"p/{i:03d}"), key=f"p/{i:03d}") for i in range(300)]
        refused = [ObjectCreated(_env(f"p/refused/{i}"), key=f"p/refused/{i}") for i in range(3)]
        events[17:17] = refused[:1]
        events[150:150] = refused[1:]
        publish_all(settings, events)
        publish_all(
            settings, [MetadataUpdated(_env("p/000", expected_version=1), patch_json='{"n":1}')]
        )
        wait_caught_up(settings, timeout=120)
        with connect(settings, actor="alice") as c:
            assert c.get("p/000").metadata == {"n": 1}
            assert c.get("p/299").version == 1
        with psycopg.connect(settings.dsn) as conn:
            n = conn.execute(
                f"SELECT count(*) FROM {settings.read_model_schema}.objects"
            ).fetchone()[0]
        assert n == 300
        letters = list_dead_letters(settings)
        assert sorted(d.key for d in letters) == sorted(e.object_id for e in refused)
        assert {d.error_code for d in letters} == {"unstorable"}
        assert all("test_refuses" in d.error for d in letters)
        assert p.projector.totals.dead_letters == 3
    finally:
        p.stop()


def test_projector_survives_invalid_ids_from_an_older_client(settings):
    """Ids Postgres would accept but that are not canonical (uppercase) are refused at
    decode: folded, they would miss the idempotency and state lookups by id text."""
    codec = default_codec()
    from blobledger.infra.kafka import make_producer

    oid = new_id().upper()
    producer = make_producer(settings)
    producer.produce(
        settings.events_topic,
        key=oid.encode(),
        value=codec.encode(ObjectCreated(Envelope(object_id=oid, actor="alice"), key="p/up")),
    )
    assert producer.flush(10) == 0
    publish_all(settings, [ObjectCreated(_env("p/after"), key="p/after")])
    p = ThreadedProjector(settings)
    try:
        wait_caught_up(settings, timeout=120)
        with connect(settings, actor="alice") as c:
            assert c.get("p/after").version == 1
        assert [d.error_code for d in list_dead_letters(settings)] == ["codec"]
    finally:
        p.stop()
