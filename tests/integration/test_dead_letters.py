"""Records of any size on the real broker: each folds or is dead-lettered (too large for
the DLQ: as a reference), the projector goes on with every partition, and a record is
dead-lettered once, whether the projector restarts on a lost checkpoint or a replay
meets it again. Tansu reports no size limits, so the DLQ's is the assumed one
(``Settings.kafka_max_message_bytes``, 1 MiB): 1.5 MB and 12 MB records become
references, a small one is kept whole."""

from __future__ import annotations

import hashlib
import os
import zlib

import psycopg
import pytest
from psycopg import sql

from blobledger import connect
from blobledger.infra import dlq
from blobledger.infra.dlq import list_dead_letters
from blobledger.infra.kafka import LogPosition, make_producer, position_of
from blobledger.infra.limits import Source, discover
from blobledger.infra.settings import Settings
from blobledger.infra.testing.services import ThreadedWorker
from blobledger.projectors.lag import projection_lag, wait_caught_up
from blobledger.projectors.rebuild import replay
from blobledger.schemas.events import Envelope, ObjectCreated, object_id_for

from .support import ThreadedProjector, publish_all, wait_for

pytestmark = pytest.mark.integration

BIG = (1_500_000, 12_000_000)


@pytest.fixture
def tansu(stack) -> None:
    """The scenarios need a broker that takes records over 1 MiB without being told: the
    embedded Tansu does, Apache Kafka's defaults refuse them at the door."""
    if stack.mode != "embedded":
        pytest.skip("the broker refuses records over 1 MiB; these scenarios need Tansu")


def test_tansu_reports_no_size_limit_so_every_limit_is_assumed(settings, tansu):
    limits = discover(settings)
    assert {limits.of(t).source for t in settings.topics} == {Source.ASSUMED}
    assert limits.of(settings.dlq_topic).max_bytes == settings.kafka_max_message_bytes


def _created(settings: Settings, prefix: str) -> list[ObjectCreated]:
    """One ObjectCreated per partition (keys picked so each partition gets one)."""
    out: dict[int, ObjectCreated] = {}
    i = 0
    while len(out) < settings.partitions:
        key = f"{prefix}/{i}"
        oid = object_id_for("default", key)
        out.setdefault(
            zlib.crc32(oid.encode()) % settings.partitions,
            ObjectCreated(Envelope(object_id=oid, actor="alice"), key=key),
        )
        i += 1
    return list(out.values())


def _raw(settings: Settings, topic: str, values: list[bytes]) -> dict[LogPosition, bytes]:
    """Undecodable records, as a broken or hostile producer sends them; where they landed."""
    # Tansu takes records of any size: the producer must not be the one to refuse them
    producer = make_producer(settings, max_record_bytes=64 * 1024 * 1024)
    landed: dict[LogPosition, bytes] = {}

    def delivered(err, msg) -> None:
        assert err is None, err
        landed[position_of(msg)] = msg.value()

    for i, value in enumerate(values):
        producer.produce(topic, key=f"raw-{i}".encode(), value=value, on_delivery=delivered)
        assert producer.flush(120) == 0
    assert sorted(landed.values()) == sorted(values)
    return landed


def _lose_checkpoints(settings: Settings) -> None:
    """What a crash after the DLQ's acknowledgement but before the checkpoint's commit
    leaves (or a Postgres crash with synchronous_commit off): checkpoints behind letters."""
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.checkpoints SET next_offset = 0").format(
                sql.Identifier(settings.read_model_schema)
            )
        )


def test_records_of_any_size_fold_or_are_dead_lettered_once(settings, tansu, capsys):
    before, after = _created(settings, "before"), _created(settings, "after")
    publish_all(settings, before)
    garbage = [os.urandom(n) for n in BIG] + [b"\x00small and undecodable"]
    raw = _raw(settings, settings.events_topic, garbage)
    publish_all(settings, after)

    p = ThreadedProjector(settings)
    try:
        wait_caught_up(settings, timeout=180)
        assert projection_lag(settings) == 0
        with connect(settings, actor="alice") as c:  # folded on every partition after them
            assert all(c.get(e.key).version == 1 for e in after)
    finally:
        p.stop()
    letters = {(d.source_partition, d.source_offset): d for d in list_dead_letters(settings)}
    assert len(letters) == 3
    for pos, value in raw.items():
        d = letters[(pos.partition, pos.offset)]
        assert d.source_topic == settings.events_topic and d.error_code and d.error
        assert (d.size, d.sha256) == (len(value), hashlib.sha256(value).hexdigest())
        assert d.reference == (len(value) in BIG)

    # a restart on checkpoints that fell behind its letters: refolded, not dead-lettered again
    _lose_checkpoints(settings)
    p = ThreadedProjector(settings)
    try:
        wait_caught_up(settings, timeout=180)
        assert p.projector.totals.dead_letters == 3
    finally:
        p.stop()
    assert len(list_dead_letters(settings)) == 3

    # a replay meets them again, folds the same tables and adds nothing to the DLQ
    report = replay(settings, verify=True, swap=False, progress=False)
    assert report.verified, report.differences
    assert (report.dead_letters, report.dead_letters_sent) == (3, 0)
    assert len(list_dead_letters(settings)) == 3

    # the CLI shows references as such, and refuses to retry them, saying where the bytes are
    capsys.readouterr()
    assert dlq.main(["list"], settings) == 0
    listed = capsys.readouterr().out
    assert listed.count("REFERENCE to ") == 2 and "REFERENCE to 12000000 bytes" in listed
    ref = next(d for d in letters.values() if d.size == 12_000_000)
    assert dlq.main(["retry", "--offset", f"{ref.partition}:{ref.offset}"], settings) == 1
    refused = capsys.readouterr().err
    assert f"{settings.events_topic} partition {ref.source_partition}" in refused
    assert f"at offset {ref.source_offset}" in refused
    assert len(list_dead_letters(settings)) == 3  # nothing was re-published


def test_the_worker_dead_letters_a_command_too_large_for_the_dlq(settings, tansu):
    raw = _raw(settings, settings.commands_topic, [os.urandom(1_500_000), b"\x00small"])
    with ThreadedWorker(settings):
        wait_for(lambda: len(list_dead_letters(settings)) == 2, timeout=120, what="2 letters")
    letters = {(d.source_partition, d.source_offset): d for d in list_dead_letters(settings)}
    for pos, value in raw.items():
        d = letters[(pos.partition, pos.offset)]
        assert d.source_topic == settings.commands_topic
        assert (d.reference, d.size) == (len(value) > 1_000_000, len(value))
