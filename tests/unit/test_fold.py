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
)
from blobledger.schemas.lifecycle import UploadState
from blobledger.schemas.permissions import may

OID = new_id()


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


def attach(uid, expected=None):
    return BlobAttached(env(expected=expected), upload_id=uid, source="file:///x", deadline=10**18)


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
    att = BlobAttached(
        env(), upload_id=u, source="file:///x", declared_sha256="cc" * 32, deadline=1
    )
    objs, ups, write, _ = run([created(), att, stored(u, sha="dd" * 32)])
    assert objs[OID].blob is None and ups[u].state is UploadState.ORPHANED
    assert outcomes(write)[2][2] == "checksum_mismatch"


def test_users_cannot_forge_completion():
    u = new_id()
    forged = BlobStored(env("alice"), upload_id=u, sha256="aa" * 32, size=3, key="k")
    _, ups, write, _ = run([created(), attach(u), forged])
    assert outcomes(write)[2][2] == "forbidden" and ups[u].state is UploadState.PENDING


def test_command_on_events_topic_is_rejected():
    _, _, write, _ = run([created(), UploadRequested(env(), upload_id=new_id(), source="x")])
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
