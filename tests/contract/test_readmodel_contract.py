"""One contract, every read model: the Postgres ReadModel (plain, memo as the projector
runs it, complete as a replay runs it) and the in-memory twin must fold the same records
into the same objects, uploads, outcomes, blobs and checkpoints, through the applier and
the port (projectors/ports.py) alone.

The Postgres variants get a fresh database per test from the blobledger pytest plugin and
read back through a second connection, so they see only what was committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg import sql

from blobledger.infra.postgres import connect
from blobledger.infra.settings import Settings
from blobledger.projectors.applier import BatchStats, Record, apply_batch, apply_isolating
from blobledger.projectors.fold import ObjectState, Upload
from blobledger.projectors.memory import InMemoryReadModel
from blobledger.projectors.migrate import migrate
from blobledger.projectors.ports import ReadModelPort
from blobledger.projectors.readmodel import ReadModel
from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    BlobUploadFailed,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    TagsChanged,
    new_id,
    now_us,
    object_id_for,
)
from blobledger.schemas.lifecycle import UploadState

TOPIC = "contract.events"
SCHEMA = "contract"
SHA1, SHA2, SHA3 = "a1" * 32, "b2" * 32, "c3" * 32

#: event_id -> (status, reason, version)
Outcomes = dict[str, tuple[str, str | None, int]]


@dataclass
class Subject:
    """A read model under test and the means to look at what its store holds."""

    model: ReadModelPort
    #: a model over the same store that remembers nothing: what was really stored
    reopen: Callable[[], ReadModelPort]
    outcomes: Callable[[], Outcomes]
    #: sorted (object_id, version, event_id)
    versions: Callable[[], list[tuple[str, int, str]]]
    #: sha256 -> (size, key, ref_count)
    blobs: Callable[[], dict[str, tuple[int | None, str, int]]]
    #: {(object_id, principal, permission)}
    acl: Callable[[], set[tuple[str, str, str]]]


def _memory() -> Subject:
    m = InMemoryReadModel()
    return Subject(
        model=m,
        reopen=lambda: m,
        outcomes=lambda: {e: (o.status, o.reason, o.version) for e, o in m.outcomes.items()},
        versions=lambda: sorted((v.object_id, v.version, v.event_id) for v in m.versions.values()),
        blobs=lambda: {sha: (b.size, b.key, b.ref_count) for sha, b in m.blobs.items()},
        acl=lambda: {(oid, p, perm) for oid, es in m.acl_entries.items() for p, perm in es},
    )


def _postgres(settings: Settings, **options: bool) -> Iterator[Subject]:
    with connect(settings) as conn, connect(settings, autocommit=True) as reader:
        migrate(conn, SCHEMA)

        def rows(query: str) -> list[tuple[Any, ...]]:
            return reader.execute(sql.SQL(query).format(s=sql.Identifier(SCHEMA))).fetchall()

        yield Subject(
            model=ReadModel(conn, SCHEMA, **options),
            reopen=lambda: ReadModel(reader, SCHEMA),
            outcomes=lambda: {
                r[0]: (r[1], r[2], r[3])
                for r in rows(
                    "SELECT event_id::text, status, reason, version FROM {s}.event_outcomes"
                )
            },
            versions=lambda: sorted(
                (r[0], r[1], r[2])
                for r in rows(
                    "SELECT object_id::text, version, event_id::text FROM {s}.object_versions"
                )
            ),
            blobs=lambda: {
                r[0]: (r[1], r[2], r[3])
                for r in rows("SELECT sha256, size, key, ref_count FROM {s}.blobs")
            },
            acl=lambda: {
                (r[0], r[1], r[2])
                for r in rows("SELECT object_id::text, principal, permission FROM {s}.acl_entries")
            },
        )


POSTGRES_OPTIONS: dict[str, dict[str, bool]] = {
    "postgres": {},
    "postgres-memo": {"memo": True},  # the live projector
    "postgres-complete": {"complete": True},  # a replay's private rebuild schema
}


@pytest.fixture(
    params=[
        "memory",
        *(pytest.param(name, marks=pytest.mark.integration) for name in POSTGRES_OPTIONS),
    ]
)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        yield _memory()
        return
    settings: Settings = request.getfixturevalue("settings")
    yield from _postgres(settings, **POSTGRES_OPTIONS[request.param])


# --- helpers --------------------------------------------------------------------------------------
#: the objects' ids follow from their keys, as the fold requires of a create
A, B = object_id_for("default", "a"), object_id_for("default", "b")


def env(oid: str, actor: str = "alice", **kw: Any) -> Envelope:
    return Envelope(object_id=oid, actor=actor, **kw)


def attach(oid: str, uid: str) -> BlobAttached:
    return BlobAttached(
        env(oid), upload_id=uid, source="file:///x", deadline=now_us() + 3_600_000_000
    )


def stored(oid: str, uid: str, sha: str, size: int = 3) -> BlobStored:
    return BlobStored(
        env(oid, "system:blob-worker"), upload_id=uid, sha256=sha, size=size, key=f"blobs/{sha}"
    )


def records(partition: int, start: int, events: Sequence[Event]) -> list[Record]:
    return [Record(TOPIC, partition, start + i, e) for i, e in enumerate(events)]


def fold(
    model: ReadModelPort, recs: Sequence[Record], positions: dict[int, int] | None = None
) -> BatchStats:
    def refuse(rec: Record, error: Exception) -> None:
        raise AssertionError(f"nothing here is poison: {rec} {error}")

    return apply_isolating(model, TOPIC, recs, positions, refuse)


def load(
    model: ReadModelPort, object_ids: Iterable[str], upload_ids: Iterable[str] = ()
) -> tuple[dict[str, ObjectState], dict[str, Upload]]:
    with model.transaction():
        objects, uploads, _ = model.load_all(object_ids, upload_ids, [])
    return objects, uploads


def checkpoints(model: ReadModelPort) -> dict[int, int]:
    with model.transaction():
        return model.checkpoints(TOPIC)


def snapshot(s: Subject, object_ids: Iterable[str], upload_ids: Iterable[str] = ()) -> Any:
    """Everything stored but the checkpoints."""
    return load(s.reopen(), object_ids, upload_ids), s.outcomes(), s.versions(), s.blobs(), s.acl()


def totals(*stats: BatchStats) -> tuple[int, int, int, int]:
    return (
        sum(x.applied for x in stats),
        sum(x.rejected for x in stats),
        sum(x.duplicates for x in stats),
        sum(x.stale for x in stats),
    )


# --- the contract ---------------------------------------------------------------------------------
def test_folds_objects_uploads_and_outcomes(subject):
    a, b, u1, u2 = A, B, new_id(), new_id()
    created_a = ObjectCreated(env(a), key="a", metadata_json='{"n":0}', tags=["x"])
    update = MetadataUpdated(env(a, expected_version=1), patch_json='{"n":1,"m":"t\\tab"}')
    conflict = MetadataUpdated(env(a, expected_version=1), patch_json='{"n":9}')
    retag = TagsChanged(env(a), added=["y"], removed=["x"])
    share = AclChanged(env(a), principal="bob", permissions=["read"])
    attach_a = attach(a, u1)
    created_b = ObjectCreated(env(b), key="b")
    attach_b = attach(b, u2)
    first = [
        *records(0, 0, [created_a, update, conflict, retag, share, attach_a, update]),
        *records(1, 0, [created_b, attach_b]),
    ]
    store_a = stored(a, u1, SHA1)
    fail_b = BlobUploadFailed(env(b, "system:reaper"), upload_id=u2, reason="timeout")
    forbidden = MetadataUpdated(env(b, "bob"), patch_json='{"n":1}')
    second = [*records(0, 7, [store_a, retag]), *records(1, 2, [fail_b, forbidden])]

    s1 = fold(subject.model, first)
    s2 = fold(subject.model, second)

    assert totals(s1) == (7, 1, 1, 0) and totals(s2) == (2, 1, 1, 0)
    assert checkpoints(subject.reopen()) == {0: 9, 1: 4}
    ok = ("accepted", None)
    assert subject.outcomes() == {
        created_a.event_id: (*ok, 1),
        update.event_id: (*ok, 2),
        conflict.event_id: ("rejected", "conflict", 2),
        retag.event_id: (*ok, 3),
        share.event_id: (*ok, 4),
        attach_a.event_id: (*ok, 5),
        store_a.event_id: (*ok, 5),
        created_b.event_id: (*ok, 1),
        attach_b.event_id: (*ok, 2),
        fail_b.event_id: (*ok, 2),
        forbidden.event_id: ("rejected", "forbidden", 2),
    }
    objects, uploads = load(subject.reopen(), [a, b, new_id()], [u1, u2])
    assert set(objects) == {a, b} and set(uploads) == {u1, u2}
    oa, ob = objects[a], objects[b]
    assert (oa.version, oa.key, oa.tags) == (5, "a", ("y",))
    assert oa.metadata == {"n": 1, "m": "t\tab"}
    assert oa.acl["bob"] == {"read"} and "admin" in oa.acl["alice"]
    assert oa.blob is not None and (oa.blob.sha256, oa.blob.size, oa.blob.upload_id) == (
        SHA1,
        3,
        u1,
    )
    assert oa.pending_upload_id is None and ob.pending_upload_id is None and ob.version == 2
    assert uploads[u1].state is UploadState.STORED and uploads[u1].sha256 == SHA1
    assert uploads[u2].state is UploadState.COMPENSATED and uploads[u2].reason == "timeout"
    assert subject.blobs() == {SHA1: (3, f"blobs/{SHA1}", 1)}
    assert subject.versions() == sorted(
        [
            *(
                (a, v, e.event_id)
                for v, e in enumerate([created_a, update, retag, share, attach_a], 1)
            ),
            (b, 1, created_b.event_id),
            (b, 2, attach_b.event_id),
        ]
    )
    assert subject.acl() == {
        (oid, p, perm) for oid, o in objects.items() for p, perms in o.acl.items() for perm in perms
    }
    # what the model hands the next batch (a memo, if it keeps one) is what it stored
    assert load(subject.model, [a, b], [u1, u2]) == (objects, uploads)


def test_reapplying_is_a_noop(subject):
    a, b = A, B
    events_a = [
        ObjectCreated(env(a), key="a"),
        MetadataUpdated(env(a, expected_version=1), patch_json='{"n":1}'),
        TagsChanged(env(a), added=["t"]),
    ]
    events_b = [ObjectCreated(env(b), key="b")]
    recs = [*records(0, 0, events_a), *records(1, 0, events_b)]
    fold(subject.model, recs)
    before = snapshot(subject, [a, b])
    assert checkpoints(subject.reopen()) == {0: 3, 1: 1}

    # the same records again (a redelivery): below the checkpoints, skipped
    assert totals(fold(subject.model, recs)) == (0, 0, 0, 4)
    assert checkpoints(subject.reopen()) == {0: 3, 1: 1}
    # the same events at later offsets (a producer's retry): duplicates by event id
    again = [*records(0, 10, events_a), *records(1, 10, events_b)]
    assert totals(fold(subject.model, again)) == (0, 0, 4, 0)
    assert checkpoints(subject.reopen()) == {0: 13, 1: 11}
    assert snapshot(subject, [a, b]) == before


def test_checkpoints_commit_with_their_rows(subject):
    class Boom(Exception):
        pass

    a = A
    recs = records(
        0, 0, [ObjectCreated(env(a), key="a"), TagsChanged(env(a, expected_version=1), added=["t"])]
    )
    with pytest.raises(Boom), subject.model.transaction():
        assert apply_batch(subject.model, TOPIC, recs).applied == 2
        raise Boom
    subject.model.rolled_back()
    # nothing of the failed transaction stays, in the store or in what the model remembers
    assert checkpoints(subject.reopen()) == {} and subject.outcomes() == {}
    assert load(subject.reopen(), [a]) == ({}, {}) and load(subject.model, [a]) == ({}, {})
    assert subject.versions() == [] and subject.acl() == set()

    assert totals(fold(subject.model, recs)) == (2, 0, 0, 0)
    assert checkpoints(subject.reopen()) == {0: 2}
    objects, _ = load(subject.reopen(), [a])
    assert objects[a].version == 2 and objects[a].tags == ("t",)


def test_checkpoint_disagreements_skip_or_rewind(subject):
    a = A
    updates = [
        MetadataUpdated(env(a, expected_version=v), patch_json=f'{{"n":{v}}}') for v in range(1, 6)
    ]
    fold(subject.model, records(0, 0, [ObjectCreated(env(a), key="a"), *updates[:2]]))
    assert checkpoints(subject.reopen()) == {0: 3}

    # our consumer stands past the checkpoint (the schema was swapped or recovered): rewind
    positions = {0: 5}
    stats = fold(subject.model, records(0, 5, updates[3:]), positions)
    assert stats.rewind == {0: 3} and totals(stats) == (0, 0, 0, 0) and positions == {0: 3}
    assert checkpoints(subject.reopen()) == {0: 3}

    # another projector folded ahead of our consumer: what is below the checkpoint is skipped
    positions = {0: 1}
    stats = fold(subject.model, records(0, 1, updates[:3]), positions)
    assert totals(stats) == (1, 0, 0, 2) and positions == {0: 4}
    assert checkpoints(subject.reopen()) == {0: 4}
    objects, _ = load(subject.reopen(), [a])
    assert objects[a].version == 4 and objects[a].metadata == {"n": 3}


def test_blob_reference_counts(subject):
    a, b = A, B
    ua1, ua2, ua3, ub = new_id(), new_id(), new_id(), new_id()
    fold(
        subject.model,
        [
            *records(0, 0, [ObjectCreated(env(a), key="a"), attach(a, ua1), stored(a, ua1, SHA1)]),
            *records(1, 0, [ObjectCreated(env(b), key="b"), attach(b, ub), stored(b, ub, SHA1)]),
        ],
    )
    assert subject.blobs() == {SHA1: (3, f"blobs/{SHA1}", 2)}  # one blob, two objects
    fold(
        subject.model,
        records(
            0,
            3,
            [
                attach(a, ua2),
                attach(a, ua3),  # supersedes ua2
                stored(a, ua2, SHA3, size=9),  # bytes nobody references: orphaned
                stored(a, ua3, SHA2, size=7),  # replaces SHA1 on a
            ],
        ),
    )
    assert subject.blobs() == {
        SHA1: (3, f"blobs/{SHA1}", 1),
        SHA2: (7, f"blobs/{SHA2}", 1),
        SHA3: (9, f"blobs/{SHA3}", 0),
    }
    _, uploads = load(subject.reopen(), [], [ua2, ua3])
    assert uploads[ua2].state is UploadState.ORPHANED and uploads[ua3].state is UploadState.STORED
    assert checkpoints(subject.reopen()) == {0: 7, 1: 3}
