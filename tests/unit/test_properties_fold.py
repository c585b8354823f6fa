"""Properties of the fold over random logs (projectors/applier.py on the in-memory read
model): event ids make it idempotent, batch boundaries do not matter, and a live projector
that crashes and is handed records again ends where a replay of the log ends.

The logs mix valid and invalid events (forged ids, bad names, broken metadata, wrong
versions, users posing as workers, redeliveries) over a few keys, actors and uploads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blobledger.projectors.applier import Record, apply_batch
from blobledger.projectors.memory import InMemoryReadModel
from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    BlobUploadFailed,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    object_id_for,
)

FAST = settings(max_examples=150, deadline=None)
TOPIC = "t.events"
PARTITIONS = 3
T0 = 1_790_000_000_000_000
HOUR = 3_600_000_000

KEYS = [("default", "a"), ("default", "b/c"), ("acme", "a")]
ACTORS = ["alice", "alice", "alice", "bob", "system:blob-worker", "*"]
UPLOADS = [str(uuid.UUID(int=i, version=4)) for i in range(1, 5)]
SHAS = ["aa" * 32, "bb" * 32, "AB" * 32]
DOCS = [
    "{}",
    '{"n":1}',
    '{"n":null,"m":{"x":[1,2.5,true]}}',
    '{"s":"caf\\u00e9"}',
    '{"bad":"\\u0000"}',
    '{"bad":"\\ud800"}',
    '{"deep":' * 9 + "1" + "}" * 9,
    "[1]",
    "{not json",
]
TAGS = ["x", "y", "bad tag"]
PRINCIPALS = ["bob", "*", "alice", ""]
PERMISSIONS = [[], ["read"], ["write"], ["admin"], ["read", "own"]]


@dataclass(frozen=True)
class Draft:
    """One event before ids and times are assigned."""

    kind: str
    key: int
    actor: str
    expected: int | None
    pick: int
    flag: bool


DRAFTS = st.builds(
    Draft,
    kind=st.sampled_from(
        ["create", "create", "update", "update", "tag", "acl", "delete", "attach", "stored", "fail"]
    ),
    key=st.integers(0, len(KEYS) - 1),
    actor=st.sampled_from(ACTORS),
    expected=st.one_of(st.none(), st.none(), st.integers(0, 4)),
    pick=st.integers(0, 100),
    flag=st.booleans(),
)


def build(d: Draft, n: int) -> Event:
    """The ``n``-th event of a log (its id and time follow from ``n``)."""
    tenant, key = KEYS[d.key]
    oid = object_id_for(tenant, key)
    env = Envelope(
        object_id=oid,
        actor=d.actor,
        tenant=tenant,
        event_id=str(uuid.UUID(int=10**6 + n, version=4)),
        occurred_at=T0 + n * 1000,
        correlation_id=str(uuid.UUID(int=n, version=4)),
        expected_version=d.expected,
    )
    p = d.pick
    if d.kind == "create":
        if d.flag and p % 4 == 0:  # a forged id: the fold must refuse it
            env = Envelope(**{**_fields(env), "object_id": str(uuid.UUID(int=p, version=4))})
        return ObjectCreated(env, key=key, metadata_json=DOCS[p % len(DOCS)], tags=TAGS[: p % 3])
    if d.kind == "update":
        return MetadataUpdated(env, patch_json=DOCS[p % len(DOCS)])
    if d.kind == "tag":
        return TagsChanged(env, added=[TAGS[p % 3]], removed=[TAGS[(p + 1) % 3]] if d.flag else [])
    if d.kind == "acl":
        return AclChanged(
            env, principal=PRINCIPALS[p % 4], permissions=PERMISSIONS[p % len(PERMISSIONS)]
        )
    if d.kind == "delete":
        return ObjectDeleted(env, reason="tidy" if d.flag else None)
    upload = UPLOADS[p % len(UPLOADS)]
    if d.kind in ("stored", "fail") and not (d.flag and p % 5 == 0):  # else a user forges it
        env = Envelope(**{**_fields(env), "actor": "system:blob-worker", "expected_version": None})
    if d.kind == "attach":
        deadline = env.occurred_at + (HOUR if p % 5 else -1)
        sha = SHAS[p % 3] if d.flag else None
        return BlobAttached(
            env, upload_id=upload, source="file:///x", declared_sha256=sha, deadline=deadline
        )
    if d.kind == "stored":
        sha = SHAS[p % 3]
        return BlobStored(env, upload_id=upload, sha256=sha, size=p, key=f"blobs/{sha}")
    return BlobUploadFailed(env, upload_id=upload, reason="timeout")


def _fields(env: Envelope) -> dict[str, Any]:
    return {name: getattr(env, name) for name in env.__slots__}  # type: ignore[attr-defined]


@st.composite
def logs(draw: st.DrawFn) -> list[Event]:
    """A log: drafted events (mostly after some creates), some delivered again later
    (producer retries)."""
    creates = draw(st.lists(st.integers(0, len(KEYS) - 1), max_size=3))
    drafts = [Draft("create", k, "alice", None, 1, False) for k in creates]
    drafts += draw(st.lists(DRAFTS, max_size=40))
    events = [build(d, n) for n, d in enumerate(drafts)]
    for _ in range(draw(st.integers(0, 3)) if events else 0):
        again = events[draw(st.integers(0, len(events) - 1))]
        events.insert(draw(st.integers(0, len(events))), again)
    return events


def records(events: list[Event], start: dict[int, int] | None = None) -> list[Record]:
    """The events as the projector reads them: keyed by object id to a partition."""
    offsets = dict(start or {})
    out = []
    for e in events:
        partition = int(e.object_id[:8], 16) % PARTITIONS
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        out.append(Record(TOPIC, partition, offset, e))
    return out


def fold(model: InMemoryReadModel, recs: list[Record]) -> None:
    with model.transaction():
        apply_batch(model, TOPIC, recs)


def tables(model: InMemoryReadModel, *, checkpoints: bool = True) -> tuple[Any, ...]:
    views = (
        model.objects,
        model.uploads,
        model.outcomes,
        model.versions,
        model.acl_entries,
        model.blobs,
    )
    return (*views, model.offsets) if checkpoints else views


def replayed(events: list[Event]) -> InMemoryReadModel:
    model = InMemoryReadModel()
    fold(model, records(events))
    return model


@FAST
@given(logs())
def test_folding_the_log_again_changes_nothing(events: list[Event]) -> None:
    """Every event published a second time (new offsets, same event ids) is a duplicate."""
    once = replayed(events)
    twice = replayed(events)
    first = records(events)
    ends = {r.partition: r.offset + 1 for r in first}
    with twice.transaction():
        stats = apply_batch(twice, TOPIC, records(events, start=ends))
    assert stats.applied == stats.rejected == 0
    assert tables(twice, checkpoints=False) == tables(once, checkpoints=False)


@FAST
@given(logs(), st.data())
def test_batch_boundaries_do_not_matter(events: list[Event], data: st.DataObject) -> None:
    recs = records(events)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(recs)), max_size=6)))
    model = InMemoryReadModel()
    for lo, hi in zip([0, *cuts], [*cuts, len(recs)], strict=True):
        fold(model, recs[lo:hi])
    assert tables(model) == tables(replayed(events))


class Crash(Exception):
    """The projector dies after folding a batch, before it commits."""


@FAST
@given(logs(), st.data())
def test_a_crashing_live_projector_ends_where_a_replay_ends(
    events: list[Event], data: st.DataObject
) -> None:
    """Live: batches of any size; some crash before their commit and are handed again,
    some are handed again after their commit (a consumer that rewound). Replay: a fresh
    model folding the whole log at once."""
    recs = records(events)
    live = InMemoryReadModel()
    at = 0
    while at < len(recs):
        size = data.draw(st.integers(1, 8))
        batch = recs[at : at + size]
        if data.draw(st.booleans()):
            try:
                with live.transaction():
                    apply_batch(live, TOPIC, batch)
                    raise Crash
            except Crash:
                pass
        fold(live, batch)
        if data.draw(st.booleans()):  # redelivered below the checkpoint: stale, skipped
            again = recs[max(0, at - size) : at + size]
            with live.transaction():
                assert apply_batch(live, TOPIC, again).applied == 0
        at += size
    assert tables(live) == tables(replayed(events))


@FAST
@given(logs())
def test_the_read_model_holds_only_what_the_contract_allows(events: list[Event]) -> None:
    """Whatever the log holds, no accepted event breaks the contract and every object's
    id is the one its tenant and key give (so no two objects share a key)."""
    from blobledger.schemas.contract import MAX_METADATA_DEPTH, event_violation, metadata_violation

    model = replayed(events)
    by_id = {e.event_id: e for e in events}
    for event_id, outcome in model.outcomes.items():
        if outcome.status == "accepted":
            assert event_violation(by_id[event_id]) is None
    for oid, state in model.objects.items():
        assert oid == object_id_for(state.tenant, state.key)
        assert metadata_violation(dict(state.metadata), max_depth=MAX_METADATA_DEPTH) is None
