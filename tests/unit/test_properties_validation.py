"""Properties of the write contract's two guards: whatever the client accepts, the fold
accepts; the client refuses everything else with a ValidationError, never another
exception; and the contract's fast paths agree with its rules written out plainly."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from blobledger.producers import validation as v
from blobledger.producers.client import Client
from blobledger.schemas import contract
from blobledger.schemas.contract import Violation
from blobledger.schemas.errors import BlobledgerError, ValidationError

from .twins import Twins, unit_settings

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: characters that break rules (controls, NUL, lone surrogates, path dots and slashes)
#: mixed with ordinary and multibyte ones
TRICKY = st.sampled_from(list("ab/.-_:=@+*é€😀 \t\n\x00\x7f\ud800\udcff"))
#: mostly ordinary text, now and then anything at all
PLAIN = st.text("abcXYZ019-_.é€😀 ", max_size=12)
TEXT = st.one_of(PLAIN, PLAIN, st.text(TRICKY, max_size=12), st.text(max_size=12))
GOOD_KEYS = st.lists(st.text("abé.-_😀", min_size=1, max_size=6), min_size=1, max_size=4).map(
    "/".join
)
KEYS = st.one_of(
    GOOD_KEYS,
    GOOD_KEYS,
    st.lists(st.text(TRICKY, min_size=1, max_size=6), min_size=1, max_size=4).map("/".join),
    TEXT,
    st.text("abé", min_size=300, max_size=600),  # near the 1024-byte limit
)
GOOD_TAGS = st.from_regex(r"[a-z0-9][a-z0-9._:/=-]{0,10}", fullmatch=True)
TAGS = st.one_of(GOOD_TAGS, GOOD_TAGS, GOOD_TAGS, GOOD_TAGS, TEXT)
CONTENT_TYPES = st.one_of(st.none(), st.sampled_from(["text/plain", "a/b; c=d"]), TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2**64, -(2**63) - 1]),
    st.sampled_from([4300, 4301]).map(lambda digits: 10**digits - 1),  # at and over the limit
    st.floats(),  # NaN and infinities included
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(TEXT, VALUES, max_size=4)
NAMES = st.one_of(st.sampled_from(["bob", "*", "svc:etl", "a.b@c", ""]), TEXT)
PERMISSIONS = st.lists(st.sampled_from(["read", "write", "admin", "own", ""]), max_size=3)
HEX = st.one_of(
    st.text("0123456789abcdefABCDEF", min_size=64, max_size=64),
    st.text("0123456789abcdefx", min_size=63, max_size=65),
)

#: the fold's reasons that depend on an object's state, not on the event
STATE_REASONS = {"exists", "not_found", "deleted", "forbidden", "conflict", "last_admin"}


def _refused(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The call's result, or None when it raised a ValidationError (and nothing else)."""
    try:
        result = call(*args, **kwargs)
    except ValidationError:
        event("refused by the client")
        return None
    event("accepted by the client")
    return result


# --- the client accepts -> the fold accepts (through the real Client and projector) ---------
@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    t = Twins(unit_settings(tmp_path_factory.mktemp("twins")))
    yield t
    t.close()


@pytest.fixture(scope="module")
def alice(twins: Twins) -> Client:
    return twins.client("alice")


_names = (f"p/{i}" for i in itertools.count())


def _fold_outcome(twins: Twins, result: Any) -> tuple[str, str | None]:
    twins.fold()
    row = twins.model.outcomes[result.event_id]
    return row.status, row.reason


@FAST
@given(key=KEYS, metadata=DOCUMENTS, tags=st.lists(TAGS, max_size=2), content_type=CONTENT_TYPES)
def test_a_create_the_client_accepts_is_accepted_by_the_fold(
    twins: Twins,
    alice: Client,
    key: str,
    metadata: dict[str, Any],
    tags: list[str],
    content_type: str | None,
) -> None:
    result = _refused(alice.create, key, metadata, tags=tags, content_type=content_type, wait=False)
    if result is not None:
        status, reason = _fold_outcome(twins, result)
        assert status == "accepted" or reason == "exists", reason


@FAST
@given(
    patch=DOCUMENTS,
    tags=st.lists(TAGS, max_size=2),
    principal=NAMES,
    permissions=PERMISSIONS,
    reason=st.one_of(st.none(), TEXT),
)
def test_commands_the_client_accepts_are_accepted_by_the_fold(
    twins: Twins,
    alice: Client,
    patch: dict[str, Any],
    tags: list[str],
    principal: str,
    permissions: list[str],
    reason: str | None,
) -> None:
    key = next(_names)
    alice.create(key, {"base": 1}, wait=False)
    calls = [
        lambda: alice.update(key, patch, wait=False),
        lambda: alice.tag(key, add=tags, remove=tags[:1], wait=False),
        lambda: alice.set_acl(key, principal, permissions, wait=False),
        lambda: alice.delete(key, reason=reason, wait=False),
    ]
    for call in calls:
        result = _refused(call)
        if result is not None:
            status, why = _fold_outcome(twins, result)
            assert status == "accepted" or why in STATE_REASONS, why


@FAST
@given(
    url=st.one_of(st.just("https://example.com/x"), TEXT.map("https://example.com/".__add__)),
    sha=st.one_of(st.none(), HEX),
    size=st.one_of(st.none(), st.integers(0, 2**40), st.integers(-1, 2**63)),
    content_type=CONTENT_TYPES,
)
def test_an_attach_the_client_accepts_is_accepted_by_the_fold(
    twins: Twins,
    alice: Client,
    url: str,
    sha: str | None,
    size: int | None,
    content_type: str | None,
) -> None:
    key = next(_names)
    alice.create(key, wait=False)
    result = _refused(
        alice.attach_blob,
        key,
        url,
        declared_sha256=sha,
        declared_size=size,
        content_type=content_type,
        wait=False,
    )
    if result is not None:
        assert _fold_outcome(twins, result) == ("accepted", None)


# --- refusals are ValidationErrors only -----------------------------------------------------
@FAST
@given(
    key=KEYS,
    metadata=st.one_of(DOCUMENTS, VALUES),
    tags=st.lists(TEXT, max_size=3),
    name=NAMES,
    permissions=st.lists(st.one_of(TEXT, st.integers()), max_size=3),
    number=st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), TEXT),
    text=st.one_of(st.none(), TEXT, st.integers()),
)
def test_validation_refuses_only_with_validation_errors(
    key: Any, metadata: Any, tags: Any, name: Any, permissions: Any, number: Any, text: Any
) -> None:
    checks = [
        lambda: v.validate_key(key),
        lambda: v.metadata_json(metadata),
        lambda: v.validate_tags(tags),
        lambda: v.validate_tenant(name),
        lambda: v.validate_principal(name),
        lambda: v.validate_actor(name),
        lambda: v.validate_permissions(permissions),
        lambda: v.validate_expected_version(number),
        lambda: v.validate_sha256(text),
        lambda: v.validate_size(number),
        lambda: v.validate_content_type(text),
        lambda: v.validate_note(text),
    ]
    for check in checks:
        try:
            check()
        except ValidationError as e:
            assert str(e)
        except BlobledgerError as e:  # pragma: no cover - the failure message says it all
            pytest.fail(f"{type(e).__name__} instead of a ValidationError: {e}")


# --- the contract's fast paths against its rules written out --------------------------------
def _plain_key_rule(key: str) -> bool:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (
        0 < size <= contract.MAX_KEY_BYTES
        and not any(ord(c) < 32 or c == "\x7f" for c in key)
        and all(s not in ("", ".", "..") for s in key.split("/"))
    )


@settings(max_examples=300, deadline=None)
@given(KEYS)
def test_the_key_rule(key: str) -> None:
    assert (contract.key_violation(key) is None) == _plain_key_rule(key)


@settings(max_examples=300, deadline=None)
@given(
    document=DOCUMENTS,
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    max_depth=st.integers(1, contract.MAX_METADATA_DEPTH),
)
def test_the_fold_parses_what_the_rules_allow_and_nothing_else(
    document: dict[str, Any], ascii_only: bool, spaced: bool, max_depth: int
) -> None:
    """``parse_metadata`` skips its walk when the text cannot break a rule; whatever the
    text's form (escaped or not, spaced or compact), it must agree with the walk."""
    try:
        text = json.dumps(
            document, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":")
        )
    except ValueError:  # an integer beyond Python's own int -> text limit
        assert contract.metadata_violation(document) is not None
        return
    parsed = contract.parse_metadata(text, max_depth=max_depth)
    # what the text says (an escaped surrogate pair is one character, though the document
    # held two lone halves), walked by the rules
    said = json.loads(text)
    allowed = contract.metadata_violation(said, max_depth=max_depth) is None
    assert allowed == (not isinstance(parsed, Violation)), (text, parsed)
    if allowed:
        assert parsed == said


@FAST
@given(DOCUMENTS)
def test_what_the_client_writes_the_fold_reads_back(document: dict[str, Any]) -> None:
    text = _refused(v.metadata_json, document)
    if text is not None:
        assert contract.parse_metadata(text) == json.loads(text)


def test_the_properties_reach_acceptance(twins: Twins, alice: Client) -> None:
    """A guard against vacuity: ordinary input passes every check above."""
    created = alice.create("docs/é/a.txt", {"n": [1, 2.5, None]}, tags=["x"], wait=False)
    assert _fold_outcome(twins, created) == ("accepted", None)
    attach = alice.attach_blob(
        "docs/é/a.txt", "https://example.com/a", declared_sha256="AB" * 32, wait=False
    )
    assert _fold_outcome(twins, attach) == ("accepted", None)


UNICODE = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@FAST
@given(tenant=st.one_of(st.sampled_from(["default", "acme"]), UNICODE), key=UNICODE)
def test_object_ids_are_uuid5_of_tenant_and_key(tenant: str, key: str) -> None:
    """``object_id_for`` spells uuid5 out for speed; it must stay uuid5."""
    import uuid

    from blobledger.schemas.events import OBJECT_NAMESPACE, object_id_for

    expected = str(uuid.uuid5(OBJECT_NAMESPACE, f"{tenant}\x00{key}"))
    assert object_id_for(tenant, key) == expected
