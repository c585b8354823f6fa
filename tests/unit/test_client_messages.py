"""What the Client's errors say: the key the caller gave (not only the id derived from it),
and "was deleted (version, by whom, when)" for a deleted object rather than "not found"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobledger.producers.client import Client
from blobledger.schemas.errors import (
    AuthorizationError,
    ConflictError,
    NotFoundError,
    ObjectDeletedError,
)
from blobledger.schemas.events import object_id_for

from .twins import Twins, unit_settings


def deleted_by_alice(version: int) -> re.Pattern[str]:
    return re.compile(
        rf"object 'docs/gone' was deleted \(version {version}, by alice at "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"
    )


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    t = Twins(unit_settings(tmp_path))
    t.start()
    yield t
    t.close()


@pytest.fixture
def alice(twins: Twins) -> Client:
    return twins.client("alice")


def test_missing_object_is_named_by_the_key_given(alice: Client) -> None:
    oid = object_id_for("default", "docs/none")
    with pytest.raises(NotFoundError) as by_key:
        alice.get("docs/none")
    assert str(by_key.value) == "object 'docs/none' not found (or not yet projected)"
    with pytest.raises(NotFoundError) as by_id:
        alice.history(oid)
    assert str(by_id.value) == f"object {oid} not found (or not yet projected)"
    with pytest.raises(NotFoundError) as write:  # the fold decides: the read model knows nothing
        alice.update("docs/none", {"a": 1})
    assert str(write.value).startswith("object 'docs/none' not found; create it first")


def test_refusals_name_the_key(twins: Twins, alice: Client) -> None:
    alice.create("docs/a", {"n": 1})
    with pytest.raises(ConflictError) as stale:
        alice.update("docs/a", {"n": 2}, expected_version=7)
    assert "object 'docs/a' is at version 1" in str(stale.value)
    with pytest.raises(AuthorizationError) as forbidden:
        twins.client("bob").tag("docs/a", add=["x"])
    assert "on object 'docs/a'" in str(forbidden.value)
    assert object_id_for("default", "docs/a") not in str(forbidden.value)
    with pytest.raises(NotFoundError) as no_version:
        alice.as_of("docs/a", version=9)
    assert str(no_version.value) == "object 'docs/a' has no version 9 (it is at version 1)"


def test_deleted_object_says_deleted_by_whom_and_when(twins: Twins, alice: Client) -> None:
    alice.create("docs/gone")
    alice.set_acl("docs/gone", "carol", ["read"])
    assert alice.delete("docs/gone").version == 3
    pattern = deleted_by_alice(3)
    for read in (lambda: alice.get("docs/gone"), lambda: twins.client("carol").get("docs/gone")):
        with pytest.raises(ObjectDeletedError) as caught:
            read()
        assert pattern.fullmatch(str(caught.value)), str(caught.value)
        assert caught.value.code == "deleted"
    published = len(twins.events())
    with pytest.raises(ObjectDeletedError) as write:  # the pre-check: nothing is published
        alice.update("docs/gone", {"v": 2})
    assert pattern.fullmatch(str(write.value)) and len(twins.events()) == published
    # someone who may not read it learns it is deleted, under the key they typed, no more
    with pytest.raises(ObjectDeletedError) as hidden:
        twins.client("bob").get("docs/gone")
    assert str(hidden.value) == "object 'docs/gone' was deleted"


def test_a_write_the_fold_refuses_as_deleted_says_so(twins: Twins, alice: Client) -> None:
    alice.create("docs/gone")
    with twins.held():  # both published before the read model shows the delete
        deleted = alice.delete("docs/gone", wait=False)
        late = alice.update("docs/gone", {"v": 2}, wait=False)
    assert alice.wait(deleted.receipt).version == 2
    with pytest.raises(ObjectDeletedError) as caught:
        alice.wait(late.receipt)
    assert deleted_by_alice(2).fullmatch(str(caught.value)), str(caught.value)
