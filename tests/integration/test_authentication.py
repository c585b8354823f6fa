"""Publishers prove who they are: the attack catalogue of the trust boundary's first part.

Each attack is what someone who can write to the log (or run the CLI with a key of their
own) tried; the fold must answer ``unauthenticated`` deterministically, the client must
refuse early with a clear error, and a replay must agree with the live projection.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from blobledger import AuthorizationError, RejectedError, connect
from blobledger.infra import keys
from blobledger.infra.dlq import list_dead_letters
from blobledger.infra.kafka import make_producer
from blobledger.infra.publisher import Publisher
from blobledger.infra.settings import Settings
from blobledger.projectors.lag import wait_caught_up
from blobledger.projectors.rebuild import replay
from blobledger.projectors.waiter import OutcomeWaiter
from blobledger.schemas.auth import AUTH_HEADER, Key, authenticator
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import (
    AclChanged,
    Envelope,
    ObjectCreated,
    UploadRequested,
    new_id,
    now_us,
    object_id_for,
)
from blobledger.schemas.receipts import EventOutcome

from .support import digests

pytestmark = pytest.mark.integration


def issue(settings: Settings, principal: str, **kw: object) -> tuple[Key, Settings]:
    """A key for ``principal`` in the stack's keyring, and settings that sign with it."""
    kind = "service" if kw.get("acts_for") else "user"
    key = keys.new_key(principal, kind, kw.get("acts_for", ()))  # type: ignore[arg-type]
    keys.add_keys(settings.keys_path, [(f"{principal}-{key.key_id}", key)])
    path = settings.keys_path / f"{principal}-{key.key_id}.json"
    return key, settings.with_(key_file=str(path))


def outcome_of(settings: Settings, event: object, signer: Key | None) -> EventOutcome:
    """Publish ``event`` raw (as an attacker with broker access would) and return what the
    fold made of it."""
    publisher = Publisher(settings, signer=signer)
    waiter = OutcomeWaiter(settings)
    try:
        receipt = publisher.publish(settings.events_topic, event)  # type: ignore[arg-type]
        return waiter.wait(receipt, timeout=60)
    finally:
        publisher.close()
        waiter.close()


def env(settings: Settings, key: str, actor: str, **kw: object) -> Envelope:
    return Envelope(
        object_id=object_id_for(settings.tenant, key), actor=actor, tenant=settings.tenant, **kw
    )  # type: ignore[arg-type]


def test_a_user_key_acts_only_as_its_user(settings, projector):
    _, as_bob = issue(settings, "bob")
    with connect(settings, actor="alice") as alice:
        alice.create("auth/alice-doc")
    # bob ran `--actor alice`: refused before anything is published
    with pytest.raises(AuthorizationError, match="may not act as 'alice'"):
        connect(as_bob, actor="alice")
    with connect(as_bob, actor="bob") as bob:
        bob.create("auth/bob-doc")  # his own identity works
        with pytest.raises(AuthorizationError):
            bob.set_acl("auth/alice-doc", "bob", ["admin"])  # and grants him nothing


def test_unsigned_and_badly_signed_events_are_rejected_and_audited(settings, projector):
    operator = keys.signing_key(settings)
    with connect(settings, actor="alice") as alice:
        alice.create("auth/target")
    grant = AclChanged(
        env(settings, "auth/target", "alice"), principal="mallory", permissions=["admin"]
    )
    assert outcome_of(settings, grant, None).reason == "unauthenticated"  # unsigned
    forged_key = dataclasses.replace(operator, secret=b"\x00" * 32)  # right id, wrong secret
    grant2 = dataclasses.replace(
        grant, envelope=dataclasses.replace(grant.envelope, event_id=new_id())
    )
    assert outcome_of(settings, grant2, forged_key).reason == "unauthenticated"
    with connect(settings, actor="alice") as alice:
        assert "mallory" not in alice.get("auth/target").acl
        rejected = [a for a in alice.audit() if a.reason == "unauthenticated"]
        assert {a.event_id for a in rejected} == {grant.event_id, grant2.event_id}


def test_a_system_actor_needs_the_system_key(settings, projector):
    bob, _ = issue(settings, "bob")
    with connect(settings, actor="alice") as alice:
        alice.create("auth/sys")
    # a raw AclChanged with actor system:evil, signed with bob's key: `may()` lets any
    # system: actor through, so only the authenticator stands in the way
    evil = AclChanged(
        env(settings, "auth/sys", "system:evil"), principal="bob", permissions=["admin"]
    )
    assert outcome_of(settings, evil, bob).reason == "unauthenticated"
    # the worker's own key acts as system:blob-worker only, not as any system: actor
    worker = keys.signing_key(settings, "blob-worker")
    evil2 = dataclasses.replace(
        evil, envelope=dataclasses.replace(evil.envelope, event_id=new_id())
    )
    assert outcome_of(settings, evil2, worker).reason == "unauthenticated"
    # nor may the operator's service key, which acts for any *user*, act as a system actor
    evil3 = dataclasses.replace(
        evil, envelope=dataclasses.replace(evil.envelope, event_id=new_id())
    )
    assert outcome_of(settings, evil3, keys.signing_key(settings)).reason == "unauthenticated"


def test_a_forged_event_replayed_under_another_key_is_rejected(settings, projector):
    bob, _ = issue(settings, "bob")
    codec = default_codec()
    with connect(settings, actor="alice") as alice:
        alice.create("auth/replayed")
    # alice's grant, its bytes taken from the log and re-signed with bob's key
    grant = AclChanged(
        env(settings, "auth/replayed", "alice"), principal="bob", permissions=["admin"]
    )
    value = codec.encode(grant)
    producer = make_producer(settings)
    producer.produce(
        settings.events_topic,
        key=grant.object_id.encode(),
        value=value,
        headers=[(AUTH_HEADER, authenticator(bob, value))],
    )
    # and the same bytes with alice's operator MAC but a changed principal (tampering)
    tampered = dataclasses.replace(
        grant, principal="mallory", envelope=dataclasses.replace(grant.envelope, event_id=new_id())
    )
    producer.produce(
        settings.events_topic,
        key=grant.object_id.encode(),
        value=codec.encode(tampered),
        headers=[(AUTH_HEADER, authenticator(keys.signing_key(settings), value))],
    )
    assert producer.flush(10) == 0
    wait_caught_up(settings, timeout=60)
    with connect(settings, actor="alice") as alice:
        acl = alice.get("auth/replayed").acl
        assert "bob" not in acl and "mallory" not in acl
        reasons = {a.event_id: a.reason for a in alice.audit()}
        assert reasons[grant.event_id] == reasons[tampered.event_id] == "unauthenticated"


def test_a_service_key_acts_only_for_the_users_it_lists(settings, projector):
    webapp, as_webapp = issue(settings, "webapp", acts_for=("carol",))
    with connect(as_webapp, actor="carol") as carol:
        carol.create("auth/carol-doc")  # the trusted application, acting for its user
    with pytest.raises(AuthorizationError):
        connect(as_webapp, actor="dave")
    # used outside its scope anyway (raw): the fold refuses it
    created = ObjectCreated(
        env(settings, "auth/dave-doc", "dave", expected_version=0), key="auth/dave-doc"
    )
    assert outcome_of(settings, created, webapp).reason == "unauthenticated"


def test_a_retired_key_still_verifies_its_old_events_and_replay_agrees(settings, projector):
    _, as_erin = issue(settings, "erin")
    with connect(as_erin, actor="erin") as erin:
        first = erin.create("auth/erin-doc")
    key_id = keys.load_key(Path(as_erin.key_file)).key_id
    retired = keys.retire_key(settings.keys_path, key_id)
    time.sleep(max(0.0, (retired.retired_at or 0) / 1e6 - time.time()) + 0.2)  # past its grace
    with connect(as_erin, actor="erin") as erin, pytest.raises(RejectedError) as e:
        erin.update("auth/erin-doc", {"after": "retirement"})
    assert e.value.reason == "unauthenticated"
    wait_caught_up(settings, timeout=60)
    before = digests(settings)
    report = replay(settings, verify=True, progress=False)
    assert report.verified and digests(settings) == before  # the same outcomes, old and new
    with connect(settings, actor="erin") as c:
        assert c.get("auth/erin-doc").version == first.version  # created, never updated


def test_the_worker_executes_no_unauthenticated_command(settings, tmp_path):
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"x" * 1000)
    from blobledger.infra.testing.services import ThreadedWorker

    cmd = UploadRequested(
        env(settings, "auth/cmd", "alice"),
        upload_id=new_id(),
        source="file://" + str(secret),
        deadline=now_us() + 60_000_000,
    )
    worker = ThreadedWorker(settings)
    try:
        publisher = Publisher(settings)  # no key: an attacker with broker access
        try:
            publisher.publish(settings.commands_topic, cmd)
        finally:
            publisher.close()
        deadline = time.monotonic() + 60
        letters: list = []
        while time.monotonic() < deadline and not letters:
            letters = [d for d in list_dead_letters(settings) if d.error_code == "unauthenticated"]
            time.sleep(0.5)
        assert letters, "the unsigned command was not dead-lettered as unauthenticated"
        assert worker.worker.handled == 0  # nothing was uploaded for it
    finally:
        worker.stop()


def test_key_files_are_private_and_listing_shows_no_secret(settings, capsys):
    from blobledger.infra import keys_cli

    ring = keys.ensure_local_keys(settings)
    assert ring.parent.stat().st_mode & 0o077 == 0
    for f in ring.parent.glob("*.json"):
        assert f.stat().st_mode & 0o077 == 0, f
    assert keys_cli.main(["list", "--json"], settings=settings) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {k["principal"] for k in listed} >= {"operator", "system:blob-worker", "system:reaper"}
    assert all("secret" not in k for k in listed)
