"""The Client on the in-memory twins (tests/unit/twins.py): the real Publisher, codec,
Projector and fold, with the log, the read model and the blob store in memory, so the
write path's rules (versions, permissions, deletes, validation, the attach protocol) are
checked end to end in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blobledger.producers.client import Client
from blobledger.schemas.errors import (
    AuthorizationError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RejectedError,
    ValidationError,
)
from blobledger.schemas.events import BlobAttached, UploadRequested, object_id_for

from .twins import Twins, unit_settings

MAX_METADATA = 1024


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    t = Twins(unit_settings(tmp_path, max_metadata_bytes=str(MAX_METADATA)))
    t.start()
    yield t
    t.close()


@pytest.fixture
def alice(twins: Twins) -> Client:
    return twins.client("alice")


@pytest.fixture
def bob(twins: Twins) -> Client:
    return twins.client("bob")


def keys(client: Client, **kw: Any) -> list[str]:
    return [v.key for v in client.list_objects(**kw).items]


def test_create_and_update_with_expected_version(twins: Twins, alice: Client) -> None:
    created = alice.create("docs/a", {"n": 1}, tags=["x"], content_type="text/plain")
    assert created.object_id == object_id_for("default", "docs/a")
    assert created.version == 1 and created.outcome is not None and created.outcome.accepted
    assert alice.update("docs/a", {"n": 2}, expected_version=1).version == 2

    with pytest.raises(ConflictError) as stale:
        alice.update("docs/a", {"n": 3}, expected_version=1)
    assert stale.value.current_version == 2
    assert alice.update(created.object_id, {"m": True}).version == 3  # by id; no version: last wins
    with pytest.raises(RejectedError) as again:
        alice.create("docs/a")
    assert again.value.reason == "exists"

    view = alice.get("docs/a")
    assert (view.version, view.metadata, view.tags) == (3, {"n": 2, "m": True}, ["x"])
    assert (view.content_type, view.acl) == ("text/plain", {"alice": ["admin", "read", "write"]})
    # the refused commands are in the log too, and in the audit trail with their reasons
    assert [(a.status, a.reason, a.version) for a in alice.audit()] == [
        ("accepted", None, 1),
        ("accepted", None, 2),
        ("rejected", "conflict", 2),
        ("accepted", None, 3),
        ("rejected", "exists", 3),
    ]
    assert len(twins.events()) == 5
    assert [h.snapshot.metadata for h in alice.history("docs/a")] == [
        {"n": 1},
        {"n": 2},
        {"n": 2, "m": True},
    ]
    assert alice.as_of("docs/a", version=1).snapshot.metadata == {"n": 1}


def test_tag_adds_and_removes(alice: Client) -> None:
    alice.create("tagged", tags=["a"])
    assert alice.tag("tagged", add=["b", "c"], remove=["a"]).version == 2
    assert alice.get("tagged").tags == ["b", "c"]
    with pytest.raises(ConflictError):
        alice.tag("tagged", add=["d"], expected_version=1)
    with pytest.raises(ValidationError):
        alice.tag("tagged")
    assert keys(alice, tag="b") == ["tagged"] and keys(alice, tag="a") == []


def test_acl_decides_what_other_actors_may_do(twins: Twins, alice: Client, bob: Client) -> None:
    carol = twins.client("carol")
    alice.create("shared", {"v": 0})
    published = len(twins.events())
    with pytest.raises(AuthorizationError):
        bob.update("shared", {"v": 1})  # the client's pre-check, from the read model
    assert len(twins.events()) == published  # refused before anything was published
    with pytest.raises(AuthorizationError):
        bob.get("shared")

    alice.set_acl("shared", "bob", ["write"])
    assert bob.get("shared").acl["bob"] == ["write"]  # write implies read
    assert bob.update("shared", {"v": 1}).version == 3
    with pytest.raises(AuthorizationError):
        bob.set_acl("shared", "carol", ["read"])  # admin only
    with pytest.raises(AuthorizationError):
        carol.get("shared")
    assert len(twins.events()) == published + 2

    # the fold's own check: the projection lags behind a revoke, so bob's pre-check passes
    # on the stale grant, and the fold (which sees the revoke first) rejects his update
    with twins.held():
        revoke = alice.set_acl("shared", "bob", [], wait=False)
        late = bob.update("shared", {"v": 2}, wait=False)
    assert alice.wait(revoke.receipt).version == 4
    with pytest.raises(AuthorizationError):
        bob.wait(late.receipt)
    assert alice.get("shared").metadata == {"v": 1}
    assert [(a.status, a.reason) for a in bob.audit()] == [
        ("accepted", None),
        ("rejected", "forbidden"),
    ]
    with pytest.raises(AuthorizationError):
        bob.get("shared")
    with pytest.raises(RejectedError) as last:
        alice.set_acl("shared", "alice", [])  # nobody could administer it
    assert last.value.reason == "last_admin"


def test_delete_then_reads_and_writes_are_not_found(twins: Twins, alice: Client) -> None:
    alice.create("gone", {"v": 1})
    assert alice.delete("gone", reason="tidy").version == 2
    with pytest.raises(NotFoundError):
        alice.get("gone")
    published = len(twins.events())
    with pytest.raises(NotFoundError):
        alice.update("gone", {"v": 2})  # the pre-check sees the delete: nothing published
    assert len(twins.events()) == published
    assert keys(alice) == []
    assert [h.snapshot.deleted for h in alice.history("gone")] == [False, True]
    with pytest.raises(NotFoundError):
        alice.delete("never-created")  # unknown to the read model: the fold says not_found
    assert len(twins.events()) == published + 1


def test_list_objects_shows_what_the_actor_may_read(
    twins: Twins, alice: Client, bob: Client
) -> None:
    carol = twins.client("carol")
    for name in ("a1", "a2", "a3", "pub"):
        alice.create(f"list/{name}", tags=["red"] if name != "a3" else [])
    bob.create("list/b1", tags=["red"])
    alice.set_acl("list/a2", "bob", ["read"])
    alice.set_acl("list/pub", "*", ["read"])

    assert keys(alice) == ["list/a1", "list/a2", "list/a3", "list/pub"]
    assert keys(bob) == ["list/a2", "list/b1", "list/pub"]
    assert keys(carol) == ["list/pub"]
    assert keys(alice, tag="red") == ["list/a1", "list/a2", "list/pub"]
    assert keys(bob, prefix="list/b") == ["list/b1"]
    first = alice.list_objects(limit=3)
    assert [v.key for v in first.items] == ["list/a1", "list/a2", "list/a3"]
    rest = alice.list_objects(limit=3, cursor=first.next_cursor)
    assert [v.key for v in rest.items] == ["list/pub"] and rest.next_cursor is None

    # another tenant: the same key is another object, and nothing of the default tenant shows
    acme = twins.client("alice", tenant="acme")
    assert keys(acme) == []
    other = acme.create("list/a1")
    assert other.version == 1 and other.object_id != alice.get("list/a1").object_id
    assert keys(acme) == ["list/a1"]


def test_attach_blob_publishes_the_event_then_the_command(
    twins: Twins, alice: Client, bob: Client, tmp_path: Path
) -> None:
    s = twins.settings
    alice.create("blob/a")
    source = tmp_path / "data.bin"
    source.write_bytes(b"hello")
    sent = len(twins.producer.topics)

    result = alice.attach_blob("blob/a", str(source), declared_size=5)

    assert twins.producer.topics[sent:] == [s.events_topic, s.commands_topic]
    attached = next(e for e in twins.events() if e.event_id == result.event_id)
    (command,) = twins.events(s.commands_topic)
    assert isinstance(attached, BlobAttached) and isinstance(command, UploadRequested)
    assert attached.upload_id == command.upload_id == result.upload_id
    # outside every source root: hard-linked into the upload's spool entry for the worker
    assert s.spool_dir is not None
    spooled = s.spool_dir / result.upload_id / "data.bin"
    assert attached.source == command.source == spooled.as_uri()
    assert spooled.stat().st_ino == source.stat().st_ino
    assert (command.declared_size, command.deadline) == (5, attached.deadline)
    assert command.envelope.causation_id == attached.event_id
    assert command.envelope.correlation_id == attached.envelope.correlation_id
    assert command.object_id == attached.object_id == result.object_id

    assert result.version == 2  # waited for the attach: the upload is pending
    assert alice.upload(result.upload_id).state == "pending"
    view = alice.get("blob/a")
    assert view.pending_upload_id == result.upload_id and view.blob is None

    sent = len(twins.producer.topics)
    with pytest.raises(AuthorizationError):
        bob.attach_blob(alice.get("blob/a").object_id, str(source))
    with pytest.raises(ValidationError):
        alice.attach_blob("blob/a", "ftp://example.com/x")
    assert len(twins.producer.topics) == sent  # neither the event nor the command went out


def test_validation_errors_publish_nothing(twins: Twins, alice: Client) -> None:
    s = twins.settings
    for key in ("", "/abs", "a//b", "a/./b", "a/../b", "tab\tkey", "k" * (s.max_key_length + 1)):
        with pytest.raises(ValidationError):
            alice.create(key)
    too_big = {"text": "x" * MAX_METADATA}
    with pytest.raises(ValidationError, match="limit is 1024"):
        alice.create("ok", too_big)
    with pytest.raises(ValidationError):
        alice.update("ok", too_big)
    with pytest.raises(ValidationError):
        alice.create("ok", {"n": float("nan")})
    with pytest.raises(ValidationError):
        alice.create("ok", tags=["not a tag"])
    with pytest.raises(ValidationError):
        alice.update("ok", {"n": 1}, expected_version=-1)
    with pytest.raises(ValidationError):
        alice.set_acl("ok", "bob", ["own"])
    with pytest.raises(ValidationError):
        twins.client("system:impostor")  # reserved for blobledger's own workers

    assert twins.producer.topics == []
    for topic in s.topics:
        assert twins.messages(topic) == []
    assert twins.model.outcomes == {}


def test_text_the_read_model_cannot_hold_is_a_validation_error(twins: Twins, alice: Client) -> None:
    """Found by testers: a lone surrogate raised UnicodeEncodeError from the API, and a NUL
    in a metadata value reached the log to be rejected only by the fold."""
    alice.create("docs/ok")
    for bad in ({"a": "\ud800"}, {"a": "x\x00y"}, {"nested": [{"\udcff": 1}]}):
        with pytest.raises(ValidationError, match=r"NUL|lone surrogate"):
            alice.create("docs/new", bad)
        with pytest.raises(ValidationError, match=r"NUL|lone surrogate"):
            alice.update("docs/ok", bad)
    with pytest.raises(ValidationError, match="lone surrogate"):
        alice.create("caf\udce9")  # a key from a non-UTF-8 terminal
    with pytest.raises(ValidationError, match="content type"):
        alice.create("docs/new", content_type="text/\x00")
    with pytest.raises(ValidationError, match="delete reason"):
        alice.delete("docs/ok", reason="\udcff")
    with pytest.raises(ValidationError, match="deeper than"):
        alice.update("docs/ok", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}})
    assert [e.event_type for e in twins.events()] == ["ObjectCreated"]  # nothing else went out


def test_a_client_refuses_limits_above_the_contract(tmp_path: Path) -> None:
    """The fold enforces the contract's numbers: a client allowed more would publish what
    is then rejected, so it refuses to start instead."""
    t = Twins(unit_settings(tmp_path, max_metadata_bytes=str(128 * 1024)))
    try:
        with pytest.raises(ConfigurationError, match="BLOBLEDGER_MAX_METADATA_BYTES"):
            t.client("alice")
    finally:
        t.close()


def test_a_tenant_outside_the_contract_is_refused(twins: Twins) -> None:
    with pytest.raises(ValidationError, match="tenant"):
        twins.client("alice", tenant="a/b")


def test_the_attach_deadline_is_measured_from_the_event(
    twins: Twins, alice: Client, tmp_path: Path
) -> None:
    alice.create("blob/d")
    source = tmp_path / "d.bin"
    source.write_bytes(b"x")
    result = alice.attach_blob("blob/d", str(source))
    attached = next(e for e in twins.events() if e.event_id == result.event_id)
    assert isinstance(attached, BlobAttached)
    window = attached.deadline - attached.envelope.occurred_at
    assert window == twins.settings.upload_deadline_seconds * 1_000_000
