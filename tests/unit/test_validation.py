"""Write-side validation refuses bad input with a clear ValidationError."""

import pytest

from blobledger.producers import validation as v
from blobledger.schemas.errors import ValidationError


@pytest.mark.parametrize("key", ["a", "docs/readme.md", "x/y/z.bin", "ünïcode/ключ"])
def test_good_keys(key):
    assert v.validate_key(key, max_length=1024) == key


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/../b", "..", "./a", "a/.", "bad\x00nul", "tab\there", "x" * 1025]
)
def test_bad_keys(key):
    with pytest.raises(ValidationError):
        v.validate_key(key, max_length=1024)


def test_metadata_ok_and_compact():
    assert (
        v.metadata_json({"b": 1, "a": [1, 2.5, None, True]}, max_bytes=100, max_depth=4)
        == '{"a":[1,2.5,null,true],"b":1}'
    )


@pytest.mark.parametrize(
    "meta, why",
    [
        ({"a": {"b": {"c": {"d": 1}}}}, "deeper"),
        ({"a": float("nan")}, "finite"),
        ({"a": object()}, "type"),
        ({1: "x"}, "not a string"),
        ({"a": "x" * 200}, "bytes"),
        (["not", "a", "dict"], "JSON object"),
    ],
)
def test_bad_metadata(meta, why):
    with pytest.raises(ValidationError, match=why):
        v.metadata_json(meta, max_bytes=100, max_depth=3)


def test_tags_permissions_principals():
    assert v.validate_tags(["b", "a", "a"]) == ["a", "b"]
    with pytest.raises(ValidationError):
        v.validate_tags(["has space"])
    assert v.validate_permissions(["write", "read"]) == ["read", "write"]
    with pytest.raises(ValidationError):
        v.validate_permissions(["root"])
    with pytest.raises(ValidationError):
        v.validate_actor("system:blob-worker")
    with pytest.raises(ValidationError):
        v.validate_actor("*")
    assert v.validate_principal("*") == "*"


def test_hash_size_version():
    assert v.validate_sha256("AB" * 32) == "ab" * 32
    with pytest.raises(ValidationError):
        v.validate_sha256("xyz")
    with pytest.raises(ValidationError):
        v.validate_size(11, max_size=10)
    with pytest.raises(ValidationError):
        v.validate_expected_version(-1)
    with pytest.raises(ValidationError):
        v.validate_expected_version(True)
