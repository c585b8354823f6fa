"""The metadata path on real services: racing writers, crash safety, rebalances,
read-your-writes, poison messages, replay and recovery."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from blobledger import connect
from blobledger.infra.dlq import list_dead_letters, retry_dead_letters
from blobledger.projectors.lag import projection_lag, wait_caught_up
from blobledger.projectors.rebuild import ensure_database, replay
from blobledger.schemas.errors import ConflictError
from blobledger.schemas.events import (
    Envelope,
    MetadataUpdated,
    ObjectCreated,
    TagsChanged,
    object_id_for,
)

from .support import checkpoint_total, digests, projector_process, publish_all, wait_for

pytestmark = pytest.mark.integration


def workload(n_objects: int, n_updates: int, seed: int = 1) -> list:
    """Creates, then updates/tags with a mix of right and wrong expected versions."""
    rnd = random.Random(seed)
    events = []
    keys = [f"w/{i:05d}" for i in range(n_objects)]
    for k in keys:
        events.append(
            ObjectCreated(
                Envelope(object_id=object_id_for("default", k), actor="alice"),
                key=k,
                metadata_json='{"n":0}',
            )
        )
    versions = {k: 1 for k in keys}
    for i in range(n_updates):
        k = rnd.choice(keys)
        expected = versions[k] if rnd.random() < 0.9 else versions[k] + 5
        env = Envelope(
            object_id=object_id_for("default", k), actor="alice", expected_version=expected
        )
        if rnd.random() < 0.7:
            events.append(MetadataUpdated(env, patch_json=f'{{"n":{i}}}'))
        else:
            events.append(TagsChanged(env, added=[f"t{i % 7}"]))
        if expected == versions[k]:
            versions[k] += 1
    return events


def test_read_your_writes_and_queries(settings, projector):
    with connect(settings, actor="alice") as alice:
        r = alice.create("docs/readme.md", {"title": "Hi"}, tags=["doc"])
        assert r.outcome.accepted and r.version == 1
        assert alice.get("docs/readme.md").metadata == {"title": "Hi"}  # visible immediately
        r2 = alice.update("docs/readme.md", {"title": "Hello", "lang": "en"}, expected_version=1)
        assert r2.version == 2 and alice.get("docs/readme.md").metadata["title"] == "Hello"
        for i in range(5):
            alice.create(f"docs/page{i}", tags=["page"], wait=(i == 4))
        page1 = alice.list_objects(prefix="docs/page", limit=3)
        page2 = alice.list_objects(prefix="docs/page", limit=3, cursor=page1.next_cursor)
        assert [o.key for o in page1.items + page2.items] == [f"docs/page{i}" for i in range(5)]
        assert page2.next_cursor is None
        assert {o.key for o in alice.list_objects(tag="doc").items} == {"docs/readme.md"}
        assert [h.version for h in alice.history("docs/readme.md")] == [1, 2]
        assert alice.as_of("docs/readme.md", version=1).snapshot.metadata == {"title": "Hi"}
        assert (
            alice.as_of(
                "docs/readme.md", at=r2.outcome and alice.history("docs/readme.md")[0].occurred_at
            ).version
            == 1
        )
        assert len(alice.audit()) == 7
    with connect(settings, actor="mallory") as mallory:
        assert mallory.list_objects(prefix="docs/").items == []  # filtered by read permission


def test_racing_writers_exactly_one_wins(settings, projector):
    with connect(settings, actor="alice") as c:
        c.create("race/obj")

        def attempt(i: int) -> str:
            try:
                c.update("race/obj", {"winner": i}, expected_version=1)
                return "won"
            except ConflictError as e:
                assert e.current_version == 2
                return "conflict"

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(attempt, range(8)))
        assert results.count("won") == 1 and results.count("conflict") == 7
        assert c.get("race/obj").version == 2
    before = digests(settings)
    report = replay(settings, verify=True, progress=False)
    assert report.verified and digests(settings) == before  # the replay picks the same winner


def test_projector_killed_mid_batch_equals_fresh_replay(settings, tmp_path):
    events = workload(1200, 10800)  # 12k events: several batches per kill round
    publish_all(settings, events)
    total = len(events)
    for _ in range(3):
        with projector_process(settings, str(tmp_path / "projector.log")) as proc:
            start = checkpoint_total(settings)
            wait_for(
                lambda start=start: (
                    checkpoint_total(settings) > start + 500 or checkpoint_total(settings) >= total
                ),
                timeout=120,
                what="projector progress",
            )
            time.sleep(random.uniform(0.0, 0.3))
            proc.kill()  # SIGKILL, somewhere inside a batch
    with projector_process(settings, str(tmp_path / "projector.log")):
        wait_caught_up(settings, timeout=180)
    with psycopg.connect(settings.dsn) as conn:
        n = conn.execute(
            f"SELECT count(*) FROM {settings.read_model_schema}.event_outcomes"
        ).fetchone()[0]
    assert n == total  # every event applied exactly once
    report = replay(settings, verify=True, swap=False, progress=False)
    assert report.verified, report.differences


def test_two_projectors_with_rebalance(settings, tmp_path):
    events = workload(1000, 9000, seed=2)
    half = len(events) // 2
    publish_all(settings, events[:half])
    a = projector_process(settings, str(tmp_path / "a.log"))
    b = projector_process(settings, str(tmp_path / "b.log"))
    with a as pa:
        wait_for(lambda: checkpoint_total(settings) > 1000, timeout=120, what="first projector")
        with b:
            publish_all(settings, events[half:])  # arrives while the group rebalances
            time.sleep(3)
            pa.stop()  # a leaves: another rebalance, b takes every partition
            wait_caught_up(settings, timeout=180)
    with psycopg.connect(settings.dsn) as conn:
        n = conn.execute(
            f"SELECT count(*) FROM {settings.read_model_schema}.event_outcomes"
        ).fetchone()[0]
    assert n == len(events)
    report = replay(settings, verify=True, swap=False, progress=False)
    assert report.verified, report.differences


def test_poison_messages_go_to_dlq_and_projector_continues(settings, projector):
    from blobledger.infra.kafka import make_producer

    codec_valid = ObjectCreated(
        Envelope(object_id=object_id_for("default", "ok/after"), actor="alice"), key="ok/after"
    )
    producer = make_producer(settings)
    key = object_id_for("default", "ok/after").encode()
    garbage = [b"\x00\x01not avro at all", b"\xc3\x01" + b"\xee" * 8 + b"body", b"\xc3"]
    for g in garbage:
        producer.produce(settings.events_topic, key=key, value=g)
    producer.flush(10)
    publish_all(settings, [codec_valid])
    wait_caught_up(settings, timeout=60)
    with connect(settings, actor="alice") as c:
        assert c.get("ok/after").key == "ok/after"  # applied after the poison
    letters = list_dead_letters(settings)
    assert len(letters) == 3
    codes = sorted(d.error_code for d in letters)
    assert codes == ["codec", "truncated", "unknown_schema"]
    for d in letters:
        assert d.source_topic == settings.events_topic and d.source_offset is not None
        assert d.key == key.decode()
    # retry puts them back; still undecodable, they are dead-lettered again (not lost)
    assert retry_dead_letters(settings) == 3
    wait_caught_up(settings, timeout=60)
    wait_for(lambda: len(list_dead_letters(settings)) == 6, timeout=30, what="re-dead-lettered")
    assert projection_lag(settings) == 0


def test_replay_swaps_while_live_and_recover_after_drop(settings, projector):
    publish_all(settings, workload(300, 1500, seed=3))
    wait_caught_up(settings, timeout=120)
    before = digests(settings)
    report = replay(settings, verify=True, progress=False)
    assert report.verified and report.swapped and report.events == 1800
    with connect(settings, actor="alice") as c:  # the live projector keeps folding after the swap
        c.create("after/swap")
        assert c.get("after/swap").version == 1
    wait_caught_up(settings)
    before = digests(settings)
    projector.stop()  # stop using the database before it is dropped
    dbname = psycopg.conninfo.conninfo_to_dict(settings.dsn)["dbname"]
    admin = psycopg.conninfo.make_conninfo(settings.dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        conn.execute(f'DROP DATABASE "{dbname}"')
    assert ensure_database(settings) is True
    report = replay(settings, progress=False)
    assert report.swapped and digests(settings) == before


def test_projector_commits_do_not_wait_for_wal_flush_unless_asked(settings):
    """A projection can be redone from the log, so its commits skip the fsync wait; the
    setting restores durable commits for operators who want them."""
    from blobledger.infra import bootstrap

    for durable, expected in ((False, "off"), (True, "on")):
        p = bootstrap.projector(settings.with_(projector_synchronous_commit=durable))
        try:
            conn = p.model.conn  # the Postgres read model bootstrap wired in
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == expected
            conn.rollback()
        finally:
            p.close()
