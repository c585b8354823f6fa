"""One contract for the read side's queries (``ObjectQueries``): ``Queries`` over a Postgres
read model and the in-memory twin ``InMemoryQueries`` over an ``InMemoryReadModel``, both
filled by folding the same log with the applier. Where they differed, the twin was changed:
the Postgres adapter is the reference (its SQL decides order, filters, errors and the values
jsonb hands back).

The Postgres variant gets a fresh database per test from the blobledger pytest plugin and
reads through ``Queries``' own autocommit connections, so it sees only what was committed.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from blobledger.infra.postgres import connect
from blobledger.infra.settings import Settings
from blobledger.projectors.applier import Record, apply_isolating
from blobledger.projectors.memory import InMemoryQueries, InMemoryReadModel
from blobledger.projectors.migrate import migrate
from blobledger.projectors.ports import ReadModelPort
from blobledger.projectors.queries import Queries
from blobledger.projectors.readmodel import ReadModel
from blobledger.schemas.errors import (
    AuthorizationError,
    NotFoundError,
    ObjectDeletedError,
    PermanentError,
    ValidationError,
)
from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    ObjectDeleted,
    TagsChanged,
    datetime_to_us,
    new_id,
    object_id_for,
    us_to_datetime,
)
from blobledger.schemas.ports import ObjectQueries
from blobledger.schemas.views import AuditEntry, BlobInfo, ObjectView, Page, UploadView

TOPIC = "contract.events"
SCHEMA = "contract_queries"
SHA1 = "a1" * 32
T0 = datetime_to_us(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
OWNER = ["admin", "read", "write"]


@dataclass
class Subject:
    """A read model to fold into and the queries over it, per tenant."""

    model: ReadModelPort
    queries: Callable[[str], ObjectQueries]


def _memory() -> Iterator[Subject]:
    model = InMemoryReadModel()
    yield Subject(model, lambda tenant: InMemoryQueries(model, tenant))


def _postgres(settings: Settings) -> Iterator[Subject]:
    opened: list[Queries] = []

    def queries(tenant: str) -> Queries:
        q = Queries(functools.partial(connect, settings, autocommit=True), SCHEMA, tenant)
        opened.append(q)
        return q

    with connect(settings) as conn:
        migrate(conn, SCHEMA)
        try:
            yield Subject(ReadModel(conn, SCHEMA), queries)
        finally:
            for q in opened:
                q.close()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        yield from _memory()
    else:
        yield from _postgres(request.getfixturevalue("settings"))


# --- the log both read models fold ----------------------------------------------------------------
def at(n: float) -> datetime:
    """The time of the scenario's n-th tick (one second apart)."""
    return us_to_datetime(T0 + int(n * 1_000_000))


@dataclass
class World:
    """What the scenario folded: ids by name, the events, and the queries per tenant."""

    ids: dict[str, str]
    events: dict[str, Event]
    q: ObjectQueries
    t2: ObjectQueries
    uploads: dict[str, str] = field(default_factory=dict)


#: alice's readable objects in the default tenant, in key order (C collation: code points)
ALICE_KEYS = [
    "docs/a",
    "docs/b",
    "docs/c",
    "docs/json",
    "other/g",
    "p%q",
    *(f"page/{i:02d}" for i in range(12)),
    "pxq",
    "u/Z",
    "u/a",
    "u/\u00e9",
    "u/\U0001f600",
]
#: two creates of one key under ids it does not give: the fold rejects both
#: (``invalid_object_id``), so no two objects share a key; they show in the audit only
DUP_LOW = "0f000000-0000-4000-8000-000000000001"
DUP_HIGH = "f0000000-0000-4000-8000-000000000001"
NIL = "00000000-0000-0000-0000-000000000000"


class Log:
    """Builds one partition's records, a tick per event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.by_name: dict[str, Event] = {}

    def add(self, name: str | None, event: Event) -> Event:
        self.events.append(event)
        if name:
            self.by_name[name] = event
        return event

    def env(self, oid: str, actor: str = "alice", tenant: str = "default", **kw: Any) -> Envelope:
        tick = kw.pop("tick", len(self.events) + 1)
        return Envelope(
            object_id=oid,
            actor=actor,
            tenant=tenant,
            occurred_at=T0 + tick * 1_000_000,
            **kw,
        )

    def records(self) -> list[Record]:
        return [Record(TOPIC, 0, i, e) for i, e in enumerate(self.events)]


def build(subject: Subject) -> World:
    log = Log()
    ids = {k: object_id_for("default", k) for k in ("docs/a", "docs/b", "docs/c", "docs/e")}
    ids |= {k: object_id_for("default", k) for k in ("docs/json", "other/g", "z/dave")}
    ids["t2"] = object_id_for("t2", "docs/a")
    a, b, c, e = ids["docs/a"], ids["docs/b"], ids["docs/c"], ids["docs/e"]
    u1, u2 = new_id(), new_id()
    deadline = T0 + 3600 * 1_000_000

    log.add(
        "create_a",
        ObjectCreated(
            log.env(a),  # tick 1
            key="docs/a",
            metadata_json='{"n":0,"title":"A"}',
            tags=["x"],
            content_type="text/plain",
        ),
    )
    log.add("update_a", MetadataUpdated(log.env(a, expected_version=1), patch_json='{"n":1}'))
    log.add("tag_a", TagsChanged(log.env(a), added=["y"]))
    log.add("share_a", AclChanged(log.env(a), principal="bob", permissions=["read"]))
    log.add(
        "attach_a",
        BlobAttached(log.env(a), upload_id=u1, source="file:///a", deadline=deadline),
    )  # tick 5: version 5, pending u1
    log.add(
        "stored_a",
        BlobStored(
            log.env(a, "system:blob-worker"), upload_id=u1, sha256=SHA1, size=3, key=f"blobs/{SHA1}"
        ),
    )  # tick 6: committed blob, no new version
    log.add("bob_update_a", MetadataUpdated(log.env(a, "bob"), patch_json='{"n":9}'))  # forbidden
    log.add(
        "stale_update_a", MetadataUpdated(log.env(a, expected_version=2), patch_json='{"n":7}')
    )  # tick 8: conflict
    log.add("create_b", ObjectCreated(log.env(b), key="docs/b", tags=["y"]))
    log.add("public_b", AclChanged(log.env(b), principal="*", permissions=["read"]))  # tick 10
    log.add(
        "attach_b",
        BlobAttached(log.env(b), upload_id=u2, source="https://example.com/b", deadline=deadline),
    )
    log.add("create_c", ObjectCreated(log.env(c), key="docs/c"))
    log.add("create_e", ObjectCreated(log.env(e), key="docs/e"))
    log.add("delete_e", ObjectDeleted(log.env(e), reason="gone"))
    g = ids["other/g"]
    log.add("create_g", ObjectCreated(log.env(g), key="other/g", tags=["y"]))
    log.add("share_g", AclChanged(log.env(g), principal="bob", permissions=["write"]))
    for key in ("p%q", "pxq", "u/Z", "u/a", "u/\u00e9", "u/\U0001f600"):
        ids[key] = object_id_for("default", key)
        log.add(None, ObjectCreated(log.env(ids[key]), key=key))
    # the same tick for both, the higher event id first: audit orders by (time, event id)
    tick = len(log.events) + 1
    ev_low, ev_high = "00000000-0000-4000-8000-0000000000e1", "ff000000-0000-4000-8000-0000000000e1"
    log.add("dup_high", ObjectCreated(log.env(DUP_HIGH, event_id=ev_high, tick=tick), key="dup"))
    log.add("dup_low", ObjectCreated(log.env(DUP_LOW, event_id=ev_low, tick=tick), key="dup"))
    log.add(
        "create_json",
        ObjectCreated(
            log.env(ids["docs/json"]),
            key="docs/json",
            metadata_json=(
                '{"big":1e300,"e16":1e16,"f":1.5,"small":1e-7,"i":12345678901234567890,'
                '"s":"\\u00e9\\t","nested":{"l":[1,2.0,null,true]}}'
            ),
        ),
    )
    log.add("create_t2", ObjectCreated(log.env(ids["t2"], "carol", "t2"), key="docs/a"))
    log.add("create_dave", ObjectCreated(log.env(ids["z/dave"], "dave"), key="z/dave"))
    for i in range(12):
        key = f"page/{i:02d}"
        ids[key] = object_id_for("default", key)
        log.add(None, ObjectCreated(log.env(ids[key]), key=key))
        if i % 3 == 0:
            log.add(None, AclChanged(log.env(ids[key]), principal="bob", permissions=["read"]))
    # erin administers other/g and nothing else: what she may see of alice's activity
    log.add("admin_g", AclChanged(log.env(g), principal="erin", permissions=["admin"]))

    def refuse(rec: Record, error: Exception) -> None:
        raise AssertionError(f"nothing here is poison: {rec} {error}")

    recs = log.records()
    # two batches, so the second folds over stored states
    apply_isolating(subject.model, TOPIC, recs[:20], None, refuse)
    apply_isolating(subject.model, TOPIC, recs[20:], None, refuse)
    world = World(ids, log.by_name, subject.queries("default"), subject.queries("t2"))
    world.uploads = {"a": u1, "b": u2}
    return world


@pytest.fixture
def w(subject: Subject) -> World:
    return build(subject)


def keys(page: Page) -> list[str]:
    return [v.key for v in page.items]


def walk(q: ObjectQueries, actor: str, limit: int, **kw: Any) -> list[Page]:
    pages = [q.list_objects(actor=actor, limit=limit, **kw)]
    while pages[-1].next_cursor is not None:
        assert len(pages) < 100, "the cursor does not advance"
        pages.append(q.list_objects(actor=actor, limit=limit, cursor=pages[-1].next_cursor, **kw))
    return pages


# --- get and acl_of -------------------------------------------------------------------------------
def test_get_returns_the_current_view(w: World) -> None:
    a, u1 = w.ids["docs/a"], w.uploads["a"]
    expected = ObjectView(
        object_id=a,
        tenant="default",
        key="docs/a",
        version=5,
        metadata={"n": 1, "title": "A"},
        tags=["x", "y"],
        content_type="text/plain",
        deleted=False,
        acl={"alice": OWNER, "bob": ["read"]},
        blob=BlobInfo(SHA1, 3, f"blobs/{SHA1}", u1),
        pending_upload_id=None,
        created_at=at(1),
        updated_at=at(6),  # the completion moved it, without a new version
    )
    assert w.q.get(a, actor="alice") == expected
    assert w.q.get(a, actor="bob") == expected  # bob may read
    assert w.q.get(a.upper(), actor="alice") == expected  # ids are uuids, not text

    b = w.q.get(w.ids["docs/b"], actor="carol")  # everyone may read b
    assert (b.version, b.blob, b.pending_upload_id) == (3, None, w.uploads["b"])
    assert b.acl == {"*": ["read"], "alice": OWNER}
    assert w.q.get(w.ids["docs/c"], actor="system:reaper").key == "docs/c"  # system reads all


def test_get_refuses_missing_foreign_forbidden_and_deleted(w: World) -> None:
    with pytest.raises(NotFoundError):
        w.q.get(new_id(), actor="alice")
    with pytest.raises(NotFoundError):  # another tenant's object does not exist here
        w.q.get(w.ids["t2"], actor="carol")
    theirs = w.t2.get(w.ids["t2"], actor="carol")
    assert (theirs.tenant, theirs.key, theirs.acl) == ("t2", "docs/a", {"carol": OWNER})
    with pytest.raises(AuthorizationError):
        w.q.get(w.ids["docs/a"], actor="carol")
    with pytest.raises(AuthorizationError):
        w.q.get(w.ids["docs/c"], actor="bob")

    e = w.ids["docs/e"]
    with pytest.raises(ObjectDeletedError) as deleted:  # a NotFoundError that says why
        w.q.get(e, actor="alice")
    assert str(deleted.value) == (
        "object 'docs/e' was deleted (version 2, by alice at 2024-05-01 12:00:14 UTC)"
    )
    with pytest.raises(ObjectDeletedError) as hidden:  # no key, actor or time to a non-reader
        w.q.get(e, actor="bob")
    assert str(hidden.value) == f"object {e} was deleted"
    gone = w.q.get(e, actor="alice", include_deleted=True)
    assert (gone.deleted, gone.version, gone.updated_at) == (True, 2, at(14))
    with pytest.raises(PermanentError):  # not a uuid: Postgres refuses the parameter
        w.q.get("docs/a", actor="alice")


def test_acl_of_is_the_unchecked_preflight(w: World) -> None:
    assert w.q.acl_of(w.ids["docs/a"]) == ({"alice": OWNER, "bob": ["read"]}, 5, False)
    assert w.q.acl_of(w.ids["docs/e"]) == ({"alice": OWNER}, 2, True)
    assert w.q.acl_of(new_id()) is None
    assert w.q.acl_of(w.ids["t2"]) is None
    assert w.t2.acl_of(w.ids["t2"]) == ({"carol": OWNER}, 1, False)


def test_metadata_reads_back_as_jsonb_holds_it(w: World) -> None:
    """jsonb keeps numbers as ``numeric`` and prints them without an exponent: a float the
    writer formats as ``1e300`` comes back as the int 10**300, which is not equal to it."""
    m = w.q.get(w.ids["docs/json"], actor="alice").metadata
    assert m == {
        "big": 10**300,
        "e16": 10**16,
        "f": 1.5,
        "small": 1e-7,
        "i": 12345678901234567890,
        "s": "\u00e9\t",
        "nested": {"l": [1, 2.0, None, True]},
    }
    assert [type(m[k]) for k in ("big", "e16", "f", "small")] == [int, int, float, float]
    assert type(m["nested"]["l"][1]) is float
    snapshot = w.q.as_of(w.ids["docs/json"], actor="alice", version=1).snapshot
    assert snapshot.metadata == m


# --- lists ----------------------------------------------------------------------------------------
def test_list_objects_orders_by_key_then_id(w: World) -> None:
    page = w.q.list_objects(actor="alice", limit=1000)
    assert keys(page) == ALICE_KEYS and page.next_cursor is None
    assert page.items[0] == w.q.get(w.ids["docs/a"], actor="alice")  # the same views as get
    first = w.q.list_objects(actor="alice", limit=4)
    assert keys(first) == ALICE_KEYS[:4]
    second = w.q.list_objects(actor="alice", limit=1, cursor=first.next_cursor)
    assert keys(second) == ALICE_KEYS[4:5]


@pytest.mark.parametrize("limit", [1, 5, 7, len(ALICE_KEYS) - 1, len(ALICE_KEYS)])
def test_list_objects_pages_with_a_cursor(w: World, limit: int) -> None:
    pages = walk(w.q, "alice", limit)
    assert [k for p in pages for k in keys(p)] == ALICE_KEYS
    assert all(len(p.items) == limit for p in pages[:-1]) and 0 < len(pages[-1].items) <= limit
    assert len(pages) == -(-len(ALICE_KEYS) // limit)  # no empty page after an exact fit


def test_list_objects_filters_by_prefix_and_tag(w: World) -> None:
    def listed(actor: str = "alice", **kw: Any) -> list[str]:
        return keys(w.q.list_objects(actor=actor, **kw))

    assert listed(prefix="page/") == [f"page/{i:02d}" for i in range(12)]
    assert listed(prefix="p%") == ["p%q"]  # a key range, not a LIKE pattern
    assert listed(prefix="u/") == ["u/Z", "u/a", "u/\u00e9", "u/\U0001f600"]
    assert listed(prefix="docs/a") == ["docs/a"]
    assert listed(prefix="nothing") == []
    assert listed(tag="y") == ["docs/a", "docs/b", "other/g"]
    assert listed(tag="x", prefix="docs/") == ["docs/a"]
    assert listed(tag="") == ALICE_KEYS and listed(tag="nope") == []
    assert listed("carol", tag="y") == ["docs/b"]
    pages = walk(w.q, "alice", 3, prefix="page/")
    assert [k for p in pages for k in keys(p)] == [f"page/{i:02d}" for i in range(12)]


def test_list_objects_shows_what_the_actor_may_read(w: World) -> None:
    def listed(actor: str) -> list[str]:
        return keys(w.q.list_objects(actor=actor, limit=1000))

    bob = ["docs/a", "docs/b", "other/g", "page/00", "page/03", "page/06", "page/09"]
    assert listed("bob") == bob  # read, write (implies read) and everyone's read
    assert listed("carol") == ["docs/b"]
    assert listed("dave") == ["docs/b", "z/dave"]
    assert listed("system:reaper") == sorted([*ALICE_KEYS, "z/dave"])
    assert keys(w.t2.list_objects(actor="carol")) == ["docs/a"]
    assert keys(w.t2.list_objects(actor="alice")) == []
    pages = walk(w.q, "bob", 2)
    assert [k for p in pages for k in keys(p)] == bob


def test_list_objects_refuses_bad_limits_and_cursors(w: World) -> None:
    for limit in (0, -1, 1001):
        with pytest.raises(ValidationError):
            w.q.list_objects(actor="alice", limit=limit)
    for cursor in ("not a cursor", base64.urlsafe_b64encode(b'{"k": 1}').decode()):
        with pytest.raises(ValidationError):
            w.q.list_objects(actor="alice", cursor=cursor)
    foreign = base64.urlsafe_b64encode(json.dumps(["docs/b", "not-a-uuid"]).encode()).decode()
    with pytest.raises(PermanentError):
        w.q.list_objects(actor="alice", cursor=foreign)
    with pytest.raises(PermanentError):  # NUL cannot be sent as text
        w.q.list_objects(actor="alice", prefix="docs/\x00")
    # a cursor is a position, not a session: one made by hand works
    made = base64.urlsafe_b64encode(json.dumps(["pxq", NIL]).encode()).decode()
    assert keys(w.q.list_objects(actor="alice", cursor=made))[0] == "pxq"


# --- history and as_of ----------------------------------------------------------------------------
def test_history_lists_versions_with_snapshots(w: World) -> None:
    a, ev = w.ids["docs/a"], w.events
    names = ["create_a", "update_a", "tag_a", "share_a", "attach_a"]
    entries = w.q.history(a, actor="bob")
    assert [(h.version, h.event_id, h.event_type, h.actor, h.occurred_at) for h in entries] == [
        (n, ev[name].event_id, ev[name].event_type, "alice", at(n))
        for n, name in enumerate(names, 1)
    ]
    assert [h.correlation_id for h in entries] == [
        ev[name].envelope.correlation_id for name in names
    ]
    assert entries[0].snapshot == ObjectView(
        object_id=a,
        tenant="default",
        key="docs/a",
        version=1,
        metadata={"n": 0, "title": "A"},
        tags=["x"],
        content_type="text/plain",
        deleted=False,
        acl={"alice": OWNER},
        blob=None,
        pending_upload_id=None,
    )  # snapshots carry no created/updated times
    last = entries[-1].snapshot
    assert (last.version, last.blob, last.pending_upload_id) == (5, None, w.uploads["a"])
    assert last.acl == {"alice": OWNER, "bob": ["read"]} and last.tags == ["x", "y"]
    assert [h.version for h in w.q.history(a, actor="alice", after_version=3)] == [4, 5]
    assert [h.version for h in w.q.history(a, actor="alice", limit=2)] == [1, 2]
    assert w.q.history(a, actor="alice", after_version=5) == []
    assert w.q.history(a, actor="alice", limit=0) == []
    deleted = w.q.history(w.ids["docs/e"], actor="alice")  # a deleted object keeps its history
    assert [(h.version, h.snapshot.deleted) for h in deleted] == [(1, False), (2, True)]


def test_history_refuses_like_get(w: World) -> None:
    with pytest.raises(AuthorizationError):
        w.q.history(w.ids["docs/a"], actor="carol")
    with pytest.raises(NotFoundError):
        w.q.history(new_id(), actor="alice")
    with pytest.raises(NotFoundError):
        w.q.history(w.ids["t2"], actor="system:x")
    with pytest.raises(PermanentError):
        w.q.history(w.ids["docs/a"], actor="alice", limit=-1)


def test_as_of_a_version_or_a_time(w: World) -> None:
    a = w.ids["docs/a"]
    v2 = w.q.as_of(a, actor="alice", version=2)
    assert (v2.version, v2.event_id, v2.snapshot.metadata) == (
        2,
        w.events["update_a"].event_id,
        {"n": 1, "title": "A"},
    )
    assert w.q.as_of(a, actor="bob", version=2) == v2
    assert w.q.as_of(a, actor="alice", at=at(3)).version == 3  # at or before
    assert w.q.as_of(a, actor="alice", at=at(3.5)).version == 3
    assert w.q.as_of(a, actor="alice", at=at(3) - timedelta(microseconds=1)).version == 2
    assert w.q.as_of(a, actor="alice", at=at(1000)).version == 5
    assert w.q.as_of(a, actor="alice", version=3, at=at(1)).version == 3  # the version wins
    assert w.q.as_of(w.ids["docs/e"], actor="alice", version=2).snapshot.deleted
    with pytest.raises(NotFoundError):
        w.q.as_of(a, actor="alice", at=at(0.5))  # before it existed
    with pytest.raises(NotFoundError) as missing:
        w.q.as_of(a, actor="alice", version=6)
    assert str(missing.value) == "object 'docs/a' has no version 6 (it is at version 5)"
    with pytest.raises(ValidationError):
        w.q.as_of(a, actor="alice")
    with pytest.raises(NotFoundError):  # existence is checked first
        w.q.as_of(new_id(), actor="alice")
    with pytest.raises(AuthorizationError):
        w.q.as_of(a, actor="carol", version=1)


# --- audit and uploads ----------------------------------------------------------------------------
def entry(w: World, name: str, status: str, reason: str | None, version: int) -> AuditEntry:
    e = w.events[name]
    return AuditEntry(
        e.event_id,
        e.object_id,
        e.event_type,
        status,
        reason,
        version,
        us_to_datetime(e.envelope.occurred_at),
        e.envelope.correlation_id,
    )


def own(q: ObjectQueries, who: str, **kw: Any) -> list[AuditEntry]:
    """``who``'s audit as ``who`` asks for it: all of it."""
    return q.audit(who, actor=who, **kw)


def test_audit_lists_an_actors_outcomes_oldest_first(w: World) -> None:
    # bob's own refusal is his to see, though he may not write (or administer) docs/a
    assert own(w.q, "bob") == [entry(w, "bob_update_a", "rejected", "forbidden", 5)]
    assert own(w.q, "system:blob-worker") == [entry(w, "stored_a", "accepted", None, 5)]
    alice = own(w.q, "alice")
    assert alice[:4] == [
        entry(w, "create_a", "accepted", None, 1),
        entry(w, "update_a", "accepted", None, 2),
        entry(w, "tag_a", "accepted", None, 3),
        entry(w, "share_a", "accepted", None, 4),
    ]
    assert entry(w, "stale_update_a", "rejected", "conflict", 5) in alice
    times = [(x.occurred_at, x.event_id) for x in alice]
    assert times == sorted(times) and len(alice) == 40
    dups = [x.event_id for x in alice if x.object_id in (DUP_LOW, DUP_HIGH)]
    assert dups == [w.events["dup_low"].event_id, w.events["dup_high"].event_id]
    since = own(w.q, "alice", since=at(10))
    assert since[0] == entry(w, "public_b", "accepted", None, 2)  # inclusive
    assert since == [x for x in alice if x.occurred_at >= at(10)]
    assert own(w.q, "alice", limit=3) == alice[:3]
    assert own(w.q, "alice", since=at(10), limit=2) == since[:2]
    assert own(w.q, "carol") == [] and own(w.q, "nobody") == []
    assert own(w.t2, "carol") == [entry(w, "create_t2", "accepted", None, 1)]
    with pytest.raises(PermanentError):
        own(w.q, "alice", limit=-1)


def test_audit_of_another_actor_shows_only_objects_the_requester_administers(
    w: World,
) -> None:
    alice, g = own(w.q, "alice"), w.ids["other/g"]
    on_g = [x for x in alice if x.object_id == g]
    assert [x.event_id for x in on_g] == [
        w.events[name].event_id for name in ("create_g", "share_g", "admin_g")
    ]
    assert w.q.audit("alice", actor="erin") == on_g  # admin of other/g only
    # since and limit apply to what erin may see, not to alice's whole trail
    assert w.q.audit("alice", actor="erin", since=on_g[1].occurred_at, limit=1) == on_g[1:2]
    # read (bob on docs/a), write (bob on other/g) or nothing (carol) is not enough
    assert w.q.audit("alice", actor="bob") == []
    assert w.q.audit("alice", actor="carol") == []
    # alice administers docs/a, where bob was refused; erin does not
    assert w.q.audit("bob", actor="alice") == own(w.q, "bob")
    assert w.q.audit("bob", actor="erin") == []
    assert w.q.audit("alice", actor="system:auditor") == alice  # system actors see it all
    # carol administers t2's docs/a, which is no object of the default tenant
    assert w.t2.audit("carol", actor="alice") == []
    assert w.q.audit("carol", actor="carol") == []  # her t2 activity is not in this tenant
    with pytest.raises(PermanentError):  # the requester is sent as text: no NUL
        w.q.audit("alice", actor="erin\x00")


def test_upload_views(w: World) -> None:
    a, b, u1, u2 = w.ids["docs/a"], w.ids["docs/b"], w.uploads["a"], w.uploads["b"]
    deadline = us_to_datetime(T0 + 3600 * 1_000_000)
    assert w.q.upload(u1, actor="alice") == UploadView(
        u1, a, "stored", "file:///a", 5, SHA1, 3, f"blobs/{SHA1}", False, None, deadline
    )
    assert w.q.upload(u2, actor="alice") == UploadView(
        u2, b, "pending", "https://example.com/b", 3, None, None, None, False, None, deadline
    )
    assert w.q.upload(u1.upper(), actor="alice").upload_id == u1
    with pytest.raises(NotFoundError):
        w.q.upload(new_id(), actor="alice")
    with pytest.raises(PermanentError):
        w.q.upload("u1", actor="alice")


def test_upload_is_seen_by_readers_of_its_object_only(w: World) -> None:
    u1, u2 = w.uploads["a"], w.uploads["b"]
    stored = w.q.upload(u1, actor="alice")
    assert w.q.upload(u1, actor="bob") == stored  # bob may read docs/a
    assert w.q.upload(u1, actor="system:reaper") == stored
    assert w.q.upload(u2, actor="carol").upload_id == u2  # everyone may read docs/b

    def refused(q: ObjectQueries, upload_id: str, actor: str) -> str:
        with pytest.raises(NotFoundError) as caught:
            q.upload(upload_id, actor=actor)
        assert type(caught.value) is NotFoundError
        return str(caught.value)

    # no read on docs/a (erin administers another object): the answer of an unknown id
    unknown = new_id()
    assert refused(w.q, unknown, "alice") == f"upload {unknown} not found (or not yet projected)"
    for actor in ("carol", "dave", "erin"):
        assert refused(w.q, u1, actor) == f"upload {u1} not found (or not yet projected)"
    # another tenant's queries do not know it, not even for the object's owner or a system actor
    for actor in ("alice", "system:reaper"):
        refused(w.t2, u1, actor)
        refused(w.t2, u2, actor)
