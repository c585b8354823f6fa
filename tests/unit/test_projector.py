"""The Projector on the in-memory twins (tests/unit/twins.py): the real runner, applier and
DLQ over an InMemoryConsumer, an InMemoryReadModel and DeadLetters on an InMemoryProducer.
Offsets live in the model's checkpoints (never in the consumer group), bad records go to
the DLQ and never wedge the projection, and a restart folds nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from blobledger.schemas.auth import AUTH_HEADER, authenticator
from blobledger.infra.kafka import header_value
from blobledger.infra.memory import InMemoryMessage
from blobledger.projectors.memory import InMemoryOutcomes
from blobledger.projectors.rows import VersionRow
from blobledger.schemas.codec import MAGIC
from blobledger.schemas.errors import TransientError
from blobledger.schemas.events import (
    AclChanged,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    new_id,
    object_id_for,
)
from blobledger.schemas.receipts import Receipt

from .twins import Twins, unit_settings


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    t = Twins(unit_settings(tmp_path))
    yield t
    t.close()


def env(oid: str, actor: str = "alice", **kw: Any) -> Envelope:
    return Envelope(object_id=oid, actor=actor, **kw)


def produce(twins: Twins, *items: Event | tuple[str, bytes | None]) -> list[InMemoryMessage]:
    """Append events (encoded, keyed by object id, as the publisher does) or raw
    ``(key, value)`` records to the events topic; their messages, in order."""
    topic = twins.settings.events_topic
    before = {(m.partition(), m.offset()) for m in twins.messages(topic)}
    records: list[tuple[str, bytes | None]] = [
        (i.object_id, twins.codec.encode(i)) if isinstance(i, Event) else i for i in items
    ]
    for key, value in records:
        headers = [("origin", b"t")]
        if value is not None:  # signed as the operator's publisher signs
            headers.append((AUTH_HEADER, authenticator(twins.keys.operator, value)))
        twins.producer.produce(topic, value=value, key=key.encode(), headers=headers)
    twins.producer.flush(5)
    new = [m for m in twins.messages(topic) if (m.partition(), m.offset()) not in before]
    by_value = {m.value(): m for m in new}  # values are unique among the new records here
    return [by_value[value] for _, value in records]


def end_offsets(twins: Twins) -> dict[int, int]:
    topic = twins.settings.events_topic
    ends = {p: twins.broker.end_offset(topic, p) for p in range(twins.settings.partitions)}
    return {p: n for p, n in ends.items() if n}


def checkpoints(twins: Twins) -> dict[int, int]:
    with twins.model.transaction():
        return twins.model.checkpoints(twins.settings.events_topic)


def test_folds_a_produced_sequence(twins: Twins) -> None:
    a, b = object_id_for("default", "a"), object_id_for("default", "b")  # ids follow keys
    events: list[Event] = [
        ObjectCreated(env(a), key="a", metadata_json='{"n":0}'),
        MetadataUpdated(env(a, expected_version=1), patch_json='{"n":1}'),
        TagsChanged(env(a), added=["t"]),
        ObjectCreated(env(b), key="b"),
        AclChanged(env(b), principal="bob", permissions=["write"]),
        MetadataUpdated(env(b, "mallory"), patch_json='{"x":1}'),  # forbidden
        MetadataUpdated(env(b, "bob"), patch_json='{"x":2}'),
        ObjectDeleted(env(a)),
    ]
    msgs = produce(twins, *events)

    stats = twins.projector.process(twins.projector.poll_batch(1.0))

    assert (stats.applied, stats.rejected, stats.duplicates, stats.stale) == (7, 1, 0, 0)
    m = twins.model
    assert (m.objects[a].version, m.objects[a].deleted, m.objects[a].tags) == (4, True, ("t",))
    assert (m.objects[b].version, m.objects[b].metadata) == (3, {"x": 2})
    # every event has its outcome, at the position it holds in the log
    assert {e: (o.log_partition, o.log_offset) for e, o in m.outcomes.items()} == {
        e.event_id: (msg.partition(), msg.offset()) for e, msg in zip(events, msgs, strict=True)
    }
    assert m.outcomes[events[5].event_id].reason == "forbidden"
    assert sorted(v for (o, v) in m.versions if o == a) == [1, 2, 3, 4]
    assert checkpoints(twins) == end_offsets(twins)
    assert twins.projector.totals.folded == 8
    assert twins.projector.poll_batch(0.05) == []  # nothing left, nothing re-read


def test_undecodable_records_go_to_the_dlq_and_are_passed(twins: Twins) -> None:
    a = object_id_for("default", "a")
    created = ObjectCreated(env(a), key="a")
    updated = MetadataUpdated(env(a, expected_version=1), patch_json='{"n":1}')
    bad = {
        "codec": (a, b"definitely not avro"),
        "unknown_schema": (a, MAGIC + b"\x00" * 8 + b"\x02"),
        "truncated": (a, MAGIC + b"\x01"),
        "tombstone": (a, None),
    }
    msgs = produce(twins, created, *bad.values(), updated)  # one key: one partition

    stats = twins.projector.process(twins.projector.poll_batch(1.0))

    assert (stats.applied, stats.rejected) == (2, 0)
    assert twins.projector.totals.dead_letters == 4
    assert twins.model.objects[a].metadata == {"n": 1}
    (partition,) = {m.partition() for m in msgs}
    assert checkpoints(twins) == {partition: (msgs[-1].offset() or 0) + 1}  # past them all

    letters = twins.messages(twins.settings.dlq_topic)
    assert [(d.key(), d.value()) for d in letters] == [(a.encode(), v) for _, v in bad.values()]
    codes = [header_value(d.headers(), "dlq.error_code") for d in letters]
    assert codes == ["codec", "unknown_schema", "truncated", "truncated"]
    for d, original in zip(letters, msgs[1:-1], strict=True):
        h = d.headers()
        assert header_value(h, "origin") == "t"  # the original headers are kept
        assert header_value(h, "dlq.source_topic") == twins.settings.events_topic
        assert header_value(h, "dlq.source_partition") == str(original.partition())
        assert header_value(h, "dlq.source_offset") == str(original.offset())
        assert header_value(h, "dlq.error")


def test_a_restart_resumes_from_the_stored_checkpoints(twins: Twins) -> None:
    a, b = object_id_for("default", "a"), object_id_for("default", "b")  # ids follow keys
    first: list[Event] = [
        ObjectCreated(env(a), key="a"),
        ObjectCreated(env(b), key="b"),
        TagsChanged(env(a, expected_version=1), added=["t"]),
    ]
    produce(twins, *first)
    assert twins.fold().applied == 3
    folded = dict(twins.model.outcomes)

    # the group committed nothing (offsets live in the model): without the seek to the
    # stored checkpoints the new consumer would start from the beginning again
    projector = twins.restart_projector()
    assert twins.broker.committed(twins.settings.projector_group, projector.topic, 0) is None
    second: list[Event] = [
        MetadataUpdated(env(a, expected_version=2), patch_json='{"n":1}'),
        ObjectDeleted(env(b)),
    ]
    produce(twins, *second)
    stats = twins.fold()
    assert (stats.applied, stats.rejected, stats.duplicates, stats.stale) == (2, 0, 0, 0)
    assert projector.totals.folded == 2
    assert set(twins.model.outcomes) == set(folded) | {e.event_id for e in second}
    assert twins.model.objects[a].version == 3 and twins.model.objects[b].deleted

    # the same event published again (a producer retry) is a duplicate, not a new version
    produce(twins, second[0])
    again = twins.restart_projector()
    stats = twins.fold()
    assert (stats.applied, stats.duplicates, stats.stale) == (0, 1, 0)
    assert (again.totals.folded, again.totals.duplicates) == (0, 1)
    assert twins.model.objects[a].version == 3 and len(twins.model.versions) == 5
    assert checkpoints(twins) == end_offsets(twins)


def test_a_record_the_model_refuses_is_dead_lettered_alone(twins: Twins) -> None:
    a, b, c = (object_id_for("default", k) for k in "abc")
    produce(twins, ObjectCreated(env(a), key="a"), ObjectCreated(env(b), key="b"))
    twins.fold()
    # a version row an earlier run left behind: a's next version cannot be stored (the
    # primary key is taken), as Postgres refuses a row it cannot hold
    ghost = twins.model.versions[(a, 1)]
    twins.model.versions[(a, 2)] = VersionRow(
        a, 2, new_id(), "MetadataUpdated", "ghost", 0, "c", ghost.state
    )
    refused = MetadataUpdated(env(a), patch_json='{"n":1}')
    rest: list[Event] = [
        MetadataUpdated(env(b), patch_json='{"n":1}'),
        TagsChanged(env(b), added=["t"]),
        ObjectCreated(env(c), key="c"),
    ]
    msgs = produce(twins, rest[0], refused, *rest[1:])

    stats = twins.projector.process(twins.projector.poll_batch(1.0))

    assert (stats.applied, stats.dead_letters) == (3, 1)
    assert twins.model.objects[b].version == 3 and c in twins.model.objects
    assert twins.model.objects[a].version == 1 and refused.event_id not in twins.model.outcomes
    assert checkpoints(twins) == end_offsets(twins)  # passed the refused record too
    (letter,) = twins.messages(twins.settings.dlq_topic)
    h = letter.headers()
    assert letter.value() == msgs[1].value()
    assert header_value(h, "dlq.error_code") == "unstorable"
    assert "UniqueViolation" in (header_value(h, "dlq.error") or "")
    assert header_value(h, "dlq.source_offset") == str(msgs[1].offset())
    # read-your-writes on the refused event fails at once and points at the DLQ
    outcomes = InMemoryOutcomes(twins.model, twins.settings)
    receipt = Receipt(
        refused.event_id,
        a,
        twins.settings.events_topic,
        msgs[1].partition() or 0,
        msgs[1].offset() or 0,
    )
    with pytest.raises(TransientError, match="dlq"):
        outcomes.wait(receipt, timeout=1)


def test_a_batch_that_skips_records_is_not_folded_over_the_gap(twins: Twins) -> None:
    """Found by the chaos run: after an outage the consumer delivered records past the
    checkpoint (the skipped ones were never folded, replay disagreed). The projector reads
    again from the checkpoint instead of folding over the hole."""
    a = object_id_for("default", "a")
    events: list[Event] = [ObjectCreated(env(a), key="a", metadata_json='{"n":0}')]
    events += [
        MetadataUpdated(env(a, expected_version=n), patch_json=f'{{"n":{n}}}') for n in range(1, 6)
    ]
    msgs = produce(twins, *events)  # one key: one partition, offsets in order
    p = twins.projector
    p.poll_batch(1.0)  # assigned; the whole partition is fetched
    p.process(msgs[:2])
    skipped = p.process(msgs[4:])  # offsets 2 and 3 never delivered

    assert (skipped.applied, twins.model.objects[a].version) == (0, 2)
    assert checkpoints(twins) == {msgs[0].partition(): (msgs[1].offset() or 0) + 1}
    # re-read from the checkpoint: everything folds, in order
    twins.fold()
    assert twins.model.objects[a].version == 6
    assert twins.model.objects[a].metadata == {"n": 5}
    assert checkpoints(twins) == end_offsets(twins)


def test_records_fetched_beside_a_consumer_error_are_folded_not_dropped(twins: Twins) -> None:
    """A consumer error event in the middle of a fetch (a broker going away) used to be
    raised at once, dropping the good records fetched with it: the next batch then started
    past them."""
    a = object_id_for("default", "a")
    msgs = produce(
        twins,
        ObjectCreated(env(a), key="a"),
        MetadataUpdated(env(a, expected_version=1), patch_json='{"n":1}'),
    )
    p = twins.projector
    error = InMemoryMessage(
        None, None, None, error=KafkaError(KafkaError._TRANSPORT, "broker away")
    )
    real_consume = p.consumer.consume
    calls = {"n": 0}

    def consume_with_error(num: int = 1, timeout: float = -1) -> list[Any]:
        got = real_consume(num, timeout)
        calls["n"] += 1
        return [error, *got] if calls["n"] == 1 else got

    p.consumer.consume = consume_with_error  # type: ignore[method-assign]
    batch = p.poll_batch(1.0)
    p.process(batch)
    assert twins.model.objects[a].version == 2
    assert checkpoints(twins) == {msgs[0].partition(): (msgs[1].offset() or 0) + 1}
