"""The authenticator rules (schemas/auth.py) and the key files (infra/keys.py)."""

from __future__ import annotations

import dataclasses

import pytest

from blobledger.infra import keys
from blobledger.infra.settings import Settings
from blobledger.schemas import auth
from blobledger.schemas.auth import AUTH_HEADER, Keyring, authenticator, header_of
from blobledger.schemas.errors import ValidationError

VALUE = b"\xc3\x01 some encoded event"


@pytest.fixture
def ring() -> tuple[Keyring, dict[str, auth.Key]]:
    k = {
        "alice": keys.new_key("alice", "user"),
        "web": keys.new_key("web", "service", ["carol", "dave"]),
        "any": keys.new_key("operator", "service", [auth.ANY_USER]),
        "worker": keys.new_key("system:blob-worker", "system"),
    }
    return Keyring(k.values()), k


def test_each_kind_acts_only_within_its_scope(ring) -> None:
    r, k = ring
    cases = [
        ("alice", "alice", None),
        ("alice", "bob", auth.OUT_OF_SCOPE),
        ("alice", "system:blob-worker", auth.OUT_OF_SCOPE),
        ("web", "carol", None),
        ("web", "web", None),
        ("web", "erin", auth.OUT_OF_SCOPE),
        ("any", "erin", None),
        ("any", "system:reaper", auth.OUT_OF_SCOPE),
        ("worker", "system:blob-worker", None),
        ("worker", "system:reaper", auth.OUT_OF_SCOPE),
        ("worker", "alice", auth.OUT_OF_SCOPE),
    ]
    for name, actor, why in cases:
        assert r.verify(VALUE, authenticator(k[name], VALUE), actor, 1) == why, (name, actor)


def test_what_does_not_verify_says_why(ring) -> None:
    r, k = ring
    good = authenticator(k["alice"], VALUE)
    assert r.verify(VALUE, None, "alice", 1) == auth.UNSIGNED
    assert r.verify(VALUE, b"", "alice", 1) == auth.UNSIGNED
    assert r.verify(VALUE, b"no-dot", "alice", 1) == auth.MALFORMED
    assert r.verify(VALUE, b"\xff\xfe.abc", "alice", 1) == auth.MALFORMED
    assert r.verify(VALUE, b"usr-nope." + good.split(b".")[1], "alice", 1) == auth.UNKNOWN_KEY
    assert r.verify(VALUE + b"!", good, "alice", 1) == auth.BAD_MAC  # tampered bytes
    forged = dataclasses.replace(k["alice"], secret=b"x" * 32)
    assert r.verify(VALUE, authenticator(forged, VALUE), "alice", 1) == auth.BAD_MAC


def test_a_retired_key_verifies_what_occurred_before_its_retirement(ring) -> None:
    _, k = ring
    retired = dataclasses.replace(k["alice"], retired_at=1000)
    r = Keyring([retired])
    tag = authenticator(retired, VALUE)
    assert r.verify(VALUE, tag, "alice", 999) is None
    assert r.verify(VALUE, tag, "alice", 1000) is None
    assert r.verify(VALUE, tag, "alice", 1001) == auth.RETIRED


def test_unknown_ids_are_looked_up_and_remembered(ring) -> None:
    _, k = ring
    asked: list[str] = []

    def lookup(key_id: str) -> auth.Key | None:
        asked.append(key_id)
        return k["alice"] if key_id == k["alice"].key_id else None

    r = Keyring([], lookup=lookup)
    tag = authenticator(k["alice"], VALUE)
    assert r.verify(VALUE, tag, "alice", 1) is None
    assert r.verify(VALUE, tag, "alice", 1) is None
    assert asked == [k["alice"].key_id]  # found once, then held


def test_header_of_reads_lists_and_dicts() -> None:
    assert header_of([("a", b"1"), (AUTH_HEADER, b"x.y")]) == b"x.y"
    assert header_of({AUTH_HEADER: "x.y"}) == b"x.y"
    assert header_of(None) is None


def test_new_keys_refuse_impossible_scopes() -> None:
    with pytest.raises(ValidationError):
        keys.new_key("system:evil", "system")  # not a system process
    with pytest.raises(ValidationError):
        keys.new_key("system:blob-worker", "user")
    with pytest.raises(ValidationError):
        keys.new_key("alice", "system")
    with pytest.raises(ValidationError):
        keys.new_key("alice", "user", ["bob"])  # only service keys act for others
    with pytest.raises(ValidationError):
        keys.new_key("web", "service", ["system:reaper"])


def test_local_keys_are_generated_once_private_and_reloaded_on_a_new_id(tmp_path) -> None:
    s = Settings.from_env({"BLOBLEDGER_DATA_DIR": str(tmp_path)})
    ring_path = keys.ensure_local_keys(s)
    assert keys.ensure_local_keys(s) == ring_path
    first = ring_path.read_bytes()
    keys.ensure_local_keys(s)
    assert ring_path.read_bytes() == first  # idempotent
    assert (s.keys_path.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in s.keys_path.glob("*.json"))
    ring = keys.load_keyring(ring_path)
    bob = keys.new_key("bob", "user")
    keys.add_keys(s.keys_path, [("bob", bob)])
    assert ring.verify(VALUE, authenticator(bob, VALUE), "bob", 1) is None  # re-read
    assert keys.load_key(s.keys_path / "bob.json") == bob
    retired = keys.retire_key(s.keys_path, bob.key_id, at=5)
    assert retired.retired_at == 5
    fresh = keys.load_keyring(ring_path)
    assert fresh.verify(VALUE, authenticator(bob, VALUE), "bob", 6) == auth.RETIRED
    with pytest.raises(ValidationError):
        keys.retire_key(s.keys_path, bob.key_id)


def test_the_local_signer_picks_the_key_that_may_act(tmp_path) -> None:
    s = Settings.from_env({"BLOBLEDGER_DATA_DIR": str(tmp_path)})
    key_for = keys.local_signer(s)
    assert key_for("system:blob-worker").principal == "system:blob-worker"
    assert key_for("system:reaper").principal == "system:reaper"
    assert key_for("alice").principal == keys.OPERATOR
