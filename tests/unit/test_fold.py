"""The fold's rules (DESIGN.md, "The fold"), on pure in-memory state."""

import random

from blobledger.projectors.applier import BatchStats, Record, fold_records
from blobledger.projectors.fold import merge_patch
from blobledger.projectors.rows import BatchWrite
from blobledger.schemas.events import (
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
    object_id_for,
)
from blobledger.schemas.lifecycle import UploadState
from blobledger.schemas.permissions import may

OID = object_id_for("default", "k")
HOUR = 3_600_000_000


def env(actor="alice", expected=None, **kw):
    return Envelope(object_id=OID, actor=actor, expected_version=expected, **kw)


def run(events, objects=None, uploads=None):
    """Fold events the way the projector does; returns (objects, uploads, write, stats)."""
    objects = {} if objects is None else objects
    uploads = {} if uploads is None else uploads
    write, stats = BatchWrite(), BatchStats()
    recs = [Record("t", 0, i, e) for i, e in enumerate(events)]
    fold_records(recs, objects, uploads, set(), write, stats)
    return objects, uploads, write, stats


def outcomes(write):
    return [(row[2], row[5], row[6], row[7]) for row in write.outcomes]


def created(actor="alice"):
    return ObjectCreated(env(actor), key="k", metadata_json='{"a":1}', tags=["x"])


def test_create_then_update_bumps_version_and_merges():
    objs, _, write, _ = run(
        [created(), MetadataUpdated(env(expected=1), patch_json='{"b":2,"a":null}')]
    )
    assert objs[OID].version == 2
    assert objs[OID].metadata == {"b": 2}
    assert [r[1] for r in write.versions] == [1, 2]


def test_duplicate_event_id_is_a_noop():
    e = created()
    objs, _, write, stats = run([e, e])
    assert stats.duplicates == 1 and len(write.outcomes) == 1 and objs[OID].version == 1


def test_conflict_is_rejected_and_changes_nothing():
    objs, _, write, _ = run([created(), MetadataUpdated(env(expected=5), patch_json='{"b":2}')])
    assert outcomes(write)[1] == ("MetadataUpdated", "rejected", "conflict", 1)
    assert objs[OID].metadata == {"a": 1} and objs[OID].version == 1


def test_racing_writers_exactly_one_wins():
    a = MetadataUpdated(env("alice", expected=1), patch_json='{"w":"a"}')
    b = MetadataUpdated(env("alice", expected=1), patch_json='{"w":"b"}')
    _, _, write, _ = run([created(), a, b])
    statuses = [o[1] for o in outcomes(write)[1:]]
    assert statuses == ["accepted", "rejected"]


def test_permissions_are_enforced_and_acl_is_an_event():
    upd = MetadataUpdated(env("bob"), patch_json='{"b":2}')
    objs, _, write, _ = run([created(), upd])
    assert outcomes(write)[1][1:3] == ("rejected", "forbidden")
    grant = AclChanged(env("alice"), principal="bob", permissions=["write"])
    upd2 = MetadataUpdated(env("bob"), patch_json='{"b":2}')
    objs, _, write, _ = run([grant, upd2], objs)
    assert [o[1] for o in outcomes(write)] == ["accepted", "accepted"]
    # bob (write) cannot change the ACL; removing the last admin is refused
    _, _, write, _ = run(
        [
            AclChanged(env("bob"), principal="bob", permissions=["admin"]),
            AclChanged(env("alice"), principal="alice", permissions=[]),
        ],
        objs,
    )
    assert [o[2] for o in outcomes(write)] == ["forbidden", "last_admin"]


def test_may_hierarchy_and_everyone():
    acl = {"a": frozenset({"write"}), "*": frozenset({"read"})}
    assert may(acl, "a", "read") and may(acl, "a", "write") and not may(acl, "a", "admin")
    assert may(acl, "zed", "read") and not may(acl, "zed", "write")
    assert may({}, "system:blob-worker", "admin")


def test_unknown_object_and_deleted_object():
    _, _, write, _ = run([MetadataUpdated(env(), patch_json="{}")])
    assert outcomes(write)[0][2] == "not_found"
    objs, _, write, _ = run([created(), ObjectDeleted(env()), TagsChanged(env(), added=["z"])])
    assert outcomes(write)[2][2] == "deleted" and objs[OID].deleted


def test_create_twice_is_rejected_exists():
    _, _, write, _ = run([created(), created()])
    assert outcomes(write)[1][2] == "exists"


def test_invalid_metadata_in_the_log_is_rejected_not_crashed():
    _, _, write, _ = run([ObjectCreated(env(), key="k", metadata_json="[1,2")])
    assert outcomes(write)[0][2] == "invalid_metadata"


def attach(uid, expected=None, **kw):
    e = env(expected=expected)
    return BlobAttached(e, upload_id=uid, source="file:///x", deadline=e.occurred_at + HOUR, **kw)


def stored(uid, sha="aa" * 32, size=3):
    return BlobStored(
        env("system:blob-worker"), upload_id=uid, sha256=sha, size=size, key=f"blobs/{sha}"
    )


def failed(uid, reason="timeout"):
    return BlobUploadFailed(env("system:reaper"), upload_id=uid, reason=reason)


def test_blob_pending_then_committed():
    u = new_id()
    objs, ups, write, _ = run([created(), attach(u)])
    assert objs[OID].pending_upload_id == u and objs[OID].blob is None
    assert ups[u].state is UploadState.PENDING and objs[OID].version == 2
    objs, ups, write, _ = run([stored(u)], objs, ups)
    assert objs[OID].blob.sha256 == "aa" * 32 and objs[OID].pending_upload_id is None
    assert ups[u].state is UploadState.STORED and objs[OID].version == 2
    assert write.ref_deltas == {"aa" * 32: 1}


def test_compensation_rolls_back_to_last_committed():
    u1, u2 = new_id(), new_id()
    objs, ups, _, _ = run([created(), attach(u1), stored(u1), attach(u2)])
    assert objs[OID].blob.upload_id == u1 and objs[OID].pending_upload_id == u2
    objs, ups, write, _ = run([failed(u2)], objs, ups)
    assert objs[OID].blob.upload_id == u1 and objs[OID].pending_upload_id is None
    assert ups[u2].state is UploadState.COMPENSATED and ups[u2].reason == "timeout"
    # a late completion of the compensated upload finalizes nothing: orphaned bytes
    objs, ups, write, _ = run([stored(u2, sha="bb" * 32)], objs, ups)
    assert objs[OID].blob.upload_id == u1
    assert ups[u2].state is UploadState.ORPHANED
    assert outcomes(write)[0][1:3] == ("rejected", "upload_not_pending")


def test_superseded_upload_completion_is_orphaned():
    u1, u2 = new_id(), new_id()
    objs, ups, _, _ = run(
        [created(), attach(u1), attach(u2), stored(u1), stored(u2, sha="bb" * 32)]
    )
    assert objs[OID].blob.upload_id == u2
    assert ups[u1].state is UploadState.ORPHANED and ups[u2].state is UploadState.STORED


def test_redelivered_completion_and_compensation_are_noops():
    u = new_id()
    objs, ups, _, _ = run([created(), attach(u), stored(u)])
    again = BlobStored(env("system:blob-worker"), upload_id=u, sha256="aa" * 32, size=3, key="k2")
    objs2, ups2, write, _ = run([again, failed(u)], objs, ups)
    assert ups2[u].state is UploadState.STORED and objs2[OID].blob.key == "blobs/" + "aa" * 32
    assert [o[2] for o in outcomes(write)] == ["upload_not_pending", "upload_not_pending"]


def test_completion_with_undeclared_hash_is_not_committed():
    u = new_id()
    objs, ups, write, _ = run(
        [created(), attach(u, declared_sha256="cc" * 32), stored(u, "dd" * 32)]
    )
    assert objs[OID].blob is None and ups[u].state is UploadState.ORPHANED
    assert outcomes(write)[2][2] == "checksum_mismatch"


def test_users_cannot_forge_completion():
    u = new_id()
    forged = BlobStored(env("alice"), upload_id=u, sha256="aa" * 32, size=3, key="k")
    _, ups, write, _ = run([created(), attach(u), forged])
    assert outcomes(write)[2][2] == "forbidden" and ups[u].state is UploadState.PENDING


def test_command_on_events_topic_is_rejected():
    e = env()
    command = UploadRequested(e, upload_id=new_id(), source="file:///x", deadline=e.occurred_at)
    _, _, write, _ = run([created(), command])
    assert outcomes(write)[1][2] == "not_an_event"


def test_merge_patch_rfc7396():
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": None, "e": 3}, "d": None}) == {
        "a": {"c": 2, "e": 3}
    }


def test_fold_is_deterministic_under_replay():
    """Folding the same sequence twice (fresh state each time) yields identical rows."""
    rnd = random.Random(3)
    uids = [new_id() for _ in range(5)]
    events = [created()]
    for i in range(200):
        kind = rnd.randrange(6)
        actor = rnd.choice(["alice", "bob"])
        if kind == 0:
            events.append(
                MetadataUpdated(
                    env(actor, expected=rnd.choice([None, i % 7])), patch_json=f'{{"i":{i}}}'
                )
            )
        elif kind == 1:
            events.append(TagsChanged(env(actor), added=[f"t{i % 5}"]))
        elif kind == 2:
            events.append(attach(rnd.choice(uids)))
        elif kind == 3:
            events.append(stored(rnd.choice(uids), sha=f"{i % 3:02d}" * 32))
        elif kind == 4:
            events.append(failed(rnd.choice(uids)))
        else:
            events.append(
                AclChanged(
                    env("alice"), principal="bob", permissions=rnd.choice([["read"], ["write"], []])
                )
            )
    a = run(events)
    b = run(events)
    assert a[0] == b[0] and a[1] == b[1]

    def strip(w):
        return (w.versions, [r[1:] for r in w.outcomes], w.ref_deltas)

    assert strip(a[2]) == strip(b[2])


# --- the write contract (schemas/contract.py), enforced on the log --------------------------------
def nested(depth):
    """A metadata document ``depth`` objects deep."""
    return "{" + '"a":{' * (depth - 1) + "}" * depth


def test_a_create_under_an_id_not_derived_from_its_key_is_rejected():
    """Found by testers: a raw ObjectCreated with a random id and an existing key was
    accepted, so two objects shared the key."""
    stray = new_id()
    forged = ObjectCreated(Envelope(object_id=stray, actor="mallory"), key="k")
    objs, _, write, _ = run([created(), forged])
    assert outcomes(write)[1] == ("ObjectCreated", "rejected", "invalid_object_id", 0)
    assert set(objs) == {OID} and set(objs[OID].acl) == {"alice"}
    # the id is the tenant's too: the same key in another tenant is another object
    other = object_id_for("acme", "k")
    objs, _, write, _ = run(
        [ObjectCreated(Envelope(object_id=other, actor="alice", tenant="acme"), key="k")]
    )
    assert outcomes(write)[0][1] == "accepted" and other != OID


def test_metadata_nested_300_deep_is_rejected():
    """Found by testers: 300 levels were accepted while the client's limit is 8."""
    deep = nested(300)
    objs, _, write, _ = run([ObjectCreated(env(), key="k", metadata_json=deep)])
    assert outcomes(write)[0][1:3] == ("rejected", "invalid_metadata") and OID not in objs
    objs, _, write, _ = run([created(), MetadataUpdated(env(), patch_json=deep)])
    assert outcomes(write)[1][1:3] == ("rejected", "invalid_metadata")
    assert objs[OID].metadata == {"a": 1}
    # the limit itself is fine, one more level is not
    _, _, write, _ = run([ObjectCreated(env(), key="k", metadata_json=nested(8))])
    assert outcomes(write)[0][1] == "accepted"
    _, _, write, _ = run([ObjectCreated(env(), key="k", metadata_json=nested(9))])
    assert outcomes(write)[0][2] == "invalid_metadata"


def test_lone_surrogates_and_nuls_in_metadata_are_rejected():
    for text in (
        '{"a":"\\ud800"}',
        '{"\\udc00":1}',
        '{"a":["x",{"b":"\\u0000"}]}',
        '{"a\\u0000b":1}',
        '{"a":"\ud800"}',  # raw, not escaped: only an event built in memory can hold it
        '{"a":1e400}',  # overflows a float: jsonb cannot hold inf
    ):
        objs, _, write, _ = run([ObjectCreated(env(), key="k", metadata_json=text)])
        assert outcomes(write)[0][2] == "invalid_metadata" and not objs, text
        objs, _, write, _ = run([created(), MetadataUpdated(env(), patch_json=text)])
        assert outcomes(write)[1][2] == "invalid_metadata", text
        assert objs[OID].metadata == {"a": 1}


def test_metadata_patches_cannot_add_up_beyond_the_limit():
    from blobledger.schemas.contract import MAX_METADATA_BYTES

    half = "x" * (MAX_METADATA_BYTES // 2)
    objs, _, write, _ = run(
        [
            created(),
            MetadataUpdated(env(), patch_json=f'{{"p1":"{half}"}}'),
            MetadataUpdated(env(), patch_json=f'{{"p2":"{half}"}}'),
            MetadataUpdated(env(), patch_json='{"p1":null,"p3":"short"}'),
        ]
    )
    assert [o[1:3] for o in outcomes(write)[1:]] == [
        ("accepted", None),
        ("rejected", "metadata_too_large"),
        ("accepted", None),
    ]
    assert set(objs[OID].metadata) == {"a", "p3"}


def _attach_at(deadline, **kw):
    e = env()
    return BlobAttached(e, upload_id=new_id(), source="file:///x", deadline=deadline(e), **kw)


BROKEN = {
    "key with a '..' segment": (lambda: ObjectCreated(env(), key="a/../k"), "invalid_key"),
    "key over 1024 bytes": (
        lambda: ObjectCreated(
            Envelope(object_id=object_id_for("default", "é" * 513), actor="a"), key="é" * 513
        ),
        "invalid_key",
    ),
    "bad tag": (lambda: ObjectCreated(env(), key="k", tags=["has space"]), "invalid_tags"),
    "tag with a newline": (lambda: TagsChanged(env(), added=["t\n"]), "invalid_tags"),
    "empty tag change": (lambda: TagsChanged(env()), "invalid_tags"),
    "actor '*'": (lambda: MetadataUpdated(env("*"), patch_json="{}"), "invalid_actor"),
    "actor with a space": (lambda: MetadataUpdated(env("a b"), patch_json="{}"), "invalid_actor"),
    "tenant with a slash": (
        lambda: MetadataUpdated(env(tenant="a/b"), patch_json="{}"),
        "invalid_tenant",
    ),
    "occurred_at 0": (
        lambda: MetadataUpdated(env(occurred_at=0), patch_json="{}"),
        "invalid_time",
    ),
    "occurred_at in seconds": (
        lambda: MetadataUpdated(env(occurred_at=1_790_000_000), patch_json="{}"),
        "invalid_time",
    ),
    "occurred_at in 2100": (
        lambda: MetadataUpdated(env(occurred_at=4_102_444_800_000_000), patch_json="{}"),
        "invalid_time",
    ),
    "negative expected version": (
        lambda: MetadataUpdated(env(expected=-1), patch_json="{}"),
        "invalid_version",
    ),
    "unknown permission": (
        lambda: AclChanged(env(), principal="bob", permissions=["own"]),
        "invalid_acl",
    ),
    "empty principal": (lambda: AclChanged(env(), principal="", permissions=[]), "invalid_acl"),
    "deadline before the event": (
        lambda: _attach_at(lambda e: e.occurred_at - 1),
        "invalid_deadline",
    ),
    "deadline 31 days after": (
        lambda: _attach_at(lambda e: e.occurred_at + 31 * 24 * HOUR),
        "invalid_deadline",
    ),
    "declared sha256 in uppercase": (
        lambda: _attach_at(lambda e: e.occurred_at + HOUR, declared_sha256="AB" * 32),
        "invalid_sha256",
    ),
    "negative declared size": (
        lambda: _attach_at(lambda e: e.occurred_at + HOUR, declared_size=-1),
        "invalid_size",
    ),
    "source that is no URI": (
        lambda: BlobAttached(env(), upload_id=new_id(), source="/etc/passwd", deadline=2 * 10**15),
        "invalid_source",
    ),
    "stored hash not hex": (
        lambda: BlobStored(env("system:blob-worker"), upload_id=new_id(), sha256="z" * 64),
        "invalid_sha256",
    ),
    "content type with a newline": (
        lambda: ObjectCreated(env(), key="k", content_type="text/plain\nX: y"),
        "invalid_content_type",
    ),
    "delete reason with a lone surrogate": (
        lambda: ObjectDeleted(env(), reason="\udcff"),
        "invalid_note",
    ),
}


def test_events_that_break_the_contract_are_rejected_with_a_reason():
    for name, (build, reason) in BROKEN.items():
        objs, ups, write, _ = run([created(), build()])
        assert outcomes(write)[1][1:3] == ("rejected", reason), name
        assert objs[OID].version == 1 and not ups, name
