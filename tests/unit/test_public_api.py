"""The documented public API: one import namespace, errors from one place, cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import blobledger
from blobledger.schemas import errors


def test_connect_and_client_resolve() -> None:
    from blobledger.infra.bootstrap import client
    from blobledger.producers.client import Client

    assert blobledger.connect is client
    assert blobledger.Client is Client


@pytest.mark.parametrize("name", [n for n in blobledger.__all__ if n.endswith("Error")])
def test_every_error_is_the_one_in_schemas(name: str) -> None:
    assert getattr(blobledger, name) is getattr(errors, name)
    assert issubclass(getattr(blobledger, name), errors.BlobledgerError)


def test_every_public_error_class_is_exported() -> None:
    public = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, errors.BlobledgerError)
    }
    assert public <= set(blobledger.__all__)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = blobledger.nope  # type: ignore[attr-defined]


def test_import_pulls_no_driver() -> None:
    """``import blobledger`` (every CLI start) must not pay for librdkafka, psycopg, boto3."""
    code = (
        "import sys, blobledger, blobledger.schemas.errors; "
        "print(sorted(m for m in ('confluent_kafka', 'psycopg', 'boto3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_all_lists_exactly_what_resolves() -> None:
    assert set(blobledger.__all__) == set(blobledger._WHERE)
    for name in blobledger.__all__:
        assert getattr(blobledger, name) is not None
