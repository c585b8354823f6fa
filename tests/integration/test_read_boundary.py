"""Reads are checked, on real services: what mallory learns of alice's private object
(nothing, until alice shares it), whose activity an audit shows, who sees an upload, and
presigned URLs that the embedded S3 honours within their lifetime and refuses after it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3

from blobledger import connect
from blobledger.infra.settings import Settings
from blobledger.infra.testing.services import ThreadedProjector, ThreadedWorker
from blobledger.producers import blob_cli, query_cli
from blobledger.producers.client import Client
from blobledger.schemas.errors import (
    AuthorizationError,
    NotFoundError,
    TimeoutExpired,
    ValidationError,
)

from .support import child_env

pytestmark = pytest.mark.integration

KEY = "secret/report.bin"


@pytest.fixture
def services(settings: Settings) -> Iterator[None]:
    with ThreadedProjector(settings), ThreadedWorker(settings):
        yield


def _stored(client: Client, key: str, path: Path) -> str:
    """Create ``key`` with the file as its blob, wait until stored; the upload id."""
    created = client.create(key)
    up = client.attach_blob(key, str(path), expected_version=created.version)
    view = client.wait_upload(up.upload_id, timeout=120)
    assert view.state == "stored", view
    return up.upload_id


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(300_000)
    path = tmp_path / "report.bin"
    path.write_bytes(data)
    return path, data


def _http_get(url: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", url, retries=False)


def test_a_private_object_is_unreadable_until_shared(settings, services, blob):
    path, data = blob
    with connect(settings, actor="alice") as alice, connect(settings, actor="mallory") as mallory:
        upload_id = _stored(alice, KEY, path)
        version = alice.get(KEY).version

        for read in (
            lambda: mallory.get(KEY),
            lambda: mallory.history(KEY),
            lambda: mallory.as_of(KEY, version=1),
            lambda: mallory.open_blob(KEY),
            lambda: mallory.open_blob(KEY, version=version),
            lambda: mallory.presigned_url(KEY),
        ):
            with pytest.raises(AuthorizationError):
                read()
        with pytest.raises(AuthorizationError):  # the CLI's --url signs nothing for her
            blob_cli.get_main([KEY, "--url", "--actor", "mallory"], settings=settings)
        assert mallory.list_objects(prefix="secret/").items == []
        # an upload is not even there for her: the answer of an id that never existed
        with pytest.raises(NotFoundError) as refused:
            mallory.upload(upload_id)
        assert str(refused.value) == f"upload {upload_id} not found (or not yet projected)"
        with pytest.raises(TimeoutExpired, match="not found"):
            mallory.wait_upload(upload_id, timeout=1)

        alice.set_acl(KEY, "mallory", ["read"])
        assert mallory.get(KEY).key == KEY
        assert [h.version for h in mallory.history(KEY)] == list(range(1, version + 2))
        assert mallory.as_of(KEY, version=1).version == 1
        assert [o.key for o in mallory.list_objects(prefix="secret/").items] == [KEY]
        opened = mallory.open_blob(KEY)
        with opened.reader as reader:
            assert reader.read() == data
        assert opened.reader.verified
        assert _http_get(mallory.presigned_url(KEY)).data == data
        assert mallory.upload(upload_id) == alice.upload(upload_id)
        assert mallory.wait_upload(upload_id, timeout=5).state == "stored"


def test_audit_of_another_actor_shows_only_what_the_requester_administers(
    settings, projector, capsys
):
    with (
        connect(settings, actor="alice") as alice,
        connect(settings, actor="mallory") as mallory,
        connect(settings, actor="bob") as bob,
    ):
        alice.create("audit/private", {"plan": "secret"})
        alice.update("audit/private", {"plan": "still secret"})
        alice.create("audit/shared")
        alice.set_acl("audit/shared", "bob", ["admin"])
        alice.set_acl("audit/private", "mallory", ["read"])  # reading is not administering
        mallory.create("audit/mallorys")
        private, shared = alice.object_id("audit/private"), alice.object_id("audit/shared")

        everything = alice.audit()
        assert {a.object_id for a in everything} == {private, shared} and len(everything) == 5
        assert mallory.audit("alice") == []
        assert [(a.object_id, a.event_type) for a in bob.audit("alice")] == [
            (shared, "ObjectCreated"),
            (shared, "AclChanged"),
        ]
        assert [a.object_id for a in mallory.audit()] == [mallory.object_id("audit/mallorys")]
        assert alice.audit("mallory") == []  # alice administers nothing of mallory's

    # the reported attack, as typed: `blobledger object audit alice --actor mallory`
    capsys.readouterr()
    argv = ["audit", "alice", "--actor", "mallory", "--json"]
    assert query_cli.main(argv, settings=settings) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_presigned_urls_serve_the_bytes_and_expire(settings, services, blob, capsys):
    path, data = blob
    with connect(settings, actor="alice") as alice:
        _stored(alice, KEY, path)
        url = alice.presigned_url(KEY, expires_seconds=60)
        fetched = _http_get(url)
        assert fetched.status == 200
        assert hashlib.sha256(fetched.data).hexdigest() == alice.get(KEY).blob.sha256
        assert fetched.data == data
        # the longest lifetime allowed is one S3 accepts
        assert _http_get(alice.presigned_url(KEY, expires_seconds=604800)).data == data

        # `blobledger get --url` signs a download name too: the URL S3 used to refuse
        capsys.readouterr()
        assert blob_cli.get_main([KEY, "--url", "--json", "--actor", "alice"], settings) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["expires_seconds"] == 3600
        by_cli = _http_get(printed["url"])
        assert (by_cli.status, by_cli.data) == (200, data)
        assert by_cli.headers["Content-Disposition"] == 'attachment; filename="report.bin"'
        # a name that would break out of the quoted header value goes as RFC 5987 filename*
        odd = alice.presigned_url(KEY, filename='r\u00e9"port\r\n.bin')
        disposition = _http_get(odd).headers["Content-Disposition"]
        assert disposition == (
            "attachment; filename=\"r__port__.bin\"; filename*=UTF-8''r%C3%A9%22port%0D%0A.bin"
        )
        # SigV4, whose X-Amz-Expires S3 caps at 7 days (SigV2's Expires had no cap)
        assert parse_qs(urlsplit(url).query)["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]

        short = alice.presigned_url(KEY, expires_seconds=1)
        time.sleep(2.5)
        expired = _http_get(short)
        assert expired.status == 403 and b"expired" in expired.data


def test_lifetimes_outside_the_allowed_range_are_refused(settings, projector):
    with connect(settings, actor="alice") as alice:
        alice.create("life/empty")  # the range is checked before the object is looked up
        for expires in (-5, 0, 604801, 999999999):
            with pytest.raises(ValidationError, match="between 1 and 604800 seconds"):
                alice.presigned_url("life/empty", expires_seconds=expires)

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blobledger.infra.cli", "get", "life/empty", "--url", *args],
            env=child_env(settings, BLOBLEDGER_ACTOR="alice", **env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    for expires in ("-5", "999999999"):
        refused = cli("--expires", expires)
        assert refused.returncode == 1, refused
        assert f"between 1 and 604800 seconds (BLOBLEDGER_PRESIGN_MAX_SECONDS), not {expires}" in (
            refused.stderr
        )
    lowered = cli("--expires", "61", BLOBLEDGER_PRESIGN_MAX_SECONDS="60")
    assert lowered.returncode == 1 and "between 1 and 60 seconds" in lowered.stderr
