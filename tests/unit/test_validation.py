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
    with pytest.raises(ValidationError):  # beyond an Avro long: the codec could not write it
        v.validate_expected_version(2**63)


# --- what the fold would reject is refused here first, as a ValidationError --------------------
@pytest.mark.parametrize(
    "meta, where",
    [
        ({"a": "\ud800"}, "$.a"),  # found by testers: a UnicodeEncodeError traceback
        ({"a": ["ok", {"b": "\udcff"}]}, "$.a[1].b"),
        ({"a": "x\x00y"}, "$.a"),  # found by testers: reached the log, rejected only there
        ({"k\x00": 1}, "'k\\x00'"),
        ({"\ud83d": 1}, "'\\ud83d'"),
    ],
)
def test_lone_surrogates_and_nuls_in_metadata_are_refused(meta, where):
    with pytest.raises(ValidationError, match=r"NUL|lone surrogate") as refused:
        v.metadata_json(meta)
    assert where in str(refused.value)


def test_metadata_depth_counts_nesting_and_300_levels_are_refused():
    doc: dict = {}
    inner = doc
    for _ in range(299):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ValidationError, match="deeper than 8 levels"):
        v.metadata_json(doc)
    assert v.metadata_json({"a": {"b": [1]}}, max_depth=3) == '{"a":{"b":[1]}}'
    with pytest.raises(ValidationError, match=r"deeper than 2 levels at \$\.a\.b"):
        v.metadata_json({"a": {"b": [1]}}, max_depth=2)


def test_numbers_the_read_model_holds():
    # jsonb keeps integers exactly whatever their size; Python's own int <-> text limit
    # (4300 digits) is the contract's, so the fold can parse back what the client writes
    assert v.metadata_json({"i": 12345678901234567890}) == '{"i":12345678901234567890}'
    assert v.metadata_json({"i": -(10**4300 - 1)})
    with pytest.raises(ValidationError, match="4300 digits"):
        v.metadata_json({"i": 10**4300})
    with pytest.raises(ValidationError, match="finite"):
        v.metadata_json({"f": float("-inf")})


def test_keys_with_lone_surrogates_are_refused_not_crashed():
    # a key typed in a non-UTF-8 locale arrives as surrogate escapes (os.fsdecode)
    for key in ("caf\udce9", "\ud800/x"):
        with pytest.raises(ValidationError, match="lone surrogate"):
            v.validate_key(key)


def test_names_are_whole_matches():
    # `$` in a pattern also matches before a trailing newline; the contract matches whole
    for bad in ("t\n", "ok\n"):
        with pytest.raises(ValidationError):
            v.validate_tags([bad])
        with pytest.raises(ValidationError):
            v.validate_principal(bad)
    with pytest.raises(ValidationError):
        v.validate_sha256("ab" * 32 + "\n")


def test_tenant_content_type_and_notes():
    assert v.validate_tenant("acme.eu-1") == "acme.eu-1"
    for bad in ("", "a/b", "x" * 65, "caf\udce9"):
        with pytest.raises(ValidationError):
            v.validate_tenant(bad)
    assert v.validate_content_type("text/plain; charset=utf-8")
    for bad in ("", "text/\x00", "text/plain\r\nX: y", "x" * 256):
        with pytest.raises(ValidationError):
            v.validate_content_type(bad)
    assert v.validate_note("tidy\nup") == "tidy\nup"
    for bad in ("x\x00", "\udcff", "x" * 1025):
        with pytest.raises(ValidationError):
            v.validate_note(bad)


def test_settings_may_lower_the_contracts_limits_never_raise_them(tmp_path):
    from blobledger.infra.settings import Settings
    from blobledger.schemas import contract
    from blobledger.schemas.errors import ConfigurationError

    defaults = Settings.from_env({"BLOBLEDGER_DATA_DIR": str(tmp_path)})
    assert (defaults.max_key_length, defaults.max_metadata_bytes, defaults.max_metadata_depth) == (
        contract.MAX_KEY_BYTES,
        contract.MAX_METADATA_BYTES,
        contract.MAX_METADATA_DEPTH,
    )
    v.check_limits(defaults)
    v.check_limits(defaults.with_(max_metadata_bytes=1024, max_key_length=10))
    for name, value in [
        ("max_metadata_bytes", contract.MAX_METADATA_BYTES + 1),
        ("max_metadata_depth", 9),
        ("max_key_length", 2048),
        ("upload_deadline_seconds", 31 * 24 * 3600),
    ]:
        with pytest.raises(ConfigurationError, match=f"BLOBLEDGER_{name.upper()}"):
            v.check_limits(defaults.with_(**{name: value}))


def test_meta_the_cli_cannot_parse_is_a_short_validation_error():
    from blobledger.producers import cli

    for text in ("[" * 100_000, "{not json", '{"a": 1e5' + "0" * 5000):
        with pytest.raises(ValidationError, match="not valid JSON") as refused:
            cli.parser().parse_args(["create", "k", "--meta", text])
        assert len(str(refused.value)) < 300  # one readable line, not the argument echoed
