"""The worker is no confused deputy, and a hash is no capability: attacks on real services.

Whoever can attach a blob names the source and the worker reads it with its own rights.
Each test is an attack that worked before the source boundary existed: reading
``/etc/shadow``, files outside the source roots (directly, through symlinks, ``..``),
hanging the worker on a FIFO, fetching loopback services and the cloud metadata address
(directly or through a redirect), leaking a credential put in a URL, and attaching
someone else's blob by knowing its SHA-256. The worker's settings here: one source root
(a temp dir) and one allowed network, 127.0.0.2/32, for a "public" origin; 127.0.0.1
plays the internal services.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from psycopg import sql
from psycopg.rows import dict_row

from blobledger import connect
from blobledger.infra.kafka import make_consumer
from blobledger.infra.s3 import make_s3_client
from blobledger.infra.settings import Settings
from blobledger.producers import blob_cli
from blobledger.producers.client import Client
from blobledger.schemas.codec import default_codec
from blobledger.schemas.errors import ValidationError
from blobledger.schemas.events import BlobUploadFailed, Envelope, UploadRequested, new_id, now_us

from .blob_support import MiB, Origin, ThreadedWorker, make_file, wait_terminal
from .support import wait_for

pytestmark = pytest.mark.integration

PUBLIC = "127.0.0.2"  # an origin the worker is allowed to reach


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def guarded(settings: Settings, root: Path) -> Settings:
    return settings.with_(source_roots=str(root), source_allow_networks=f"{PUBLIC}/32")


@pytest.fixture
def worker(guarded: Settings, projector: Any) -> Iterator[ThreadedWorker]:
    w = ThreadedWorker(guarded, transfer_attempts=2, max_backoff=0.5)
    yield w
    w.stop()


@pytest.fixture
def internal(tmp_path: Path) -> Iterator[Origin]:
    """A loopback service with something worth stealing (a log store, an admin API)."""
    (tmp_path / "internal").mkdir()
    (tmp_path / "internal" / "secret.bin").write_bytes(b"other users' events")
    o = Origin(tmp_path / "internal")
    yield o
    o.close()


def _attach(client: Client, key: str, source: str, **kw: Any) -> str:
    client.create(key)
    return client.attach_blob(key, source, **kw).upload_id


def _outcomes(client: Client, uploads: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    return {
        name: (v.state, v.reason)
        for name, v in ((n, wait_terminal(client, u, timeout=120)) for n, u in uploads.items())
    }


def _records(settings: Settings, topic: str) -> list[bytes]:
    """Every record of ``topic`` (value and header bytes), read from the beginning."""
    consumer = make_consumer(
        settings, f"boundary-reader-{uuid.uuid4()}", **{"enable.partition.eof": True}
    )
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(md.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[bytes] = []
        at_end: set[int] = set()
        while len(at_end) < len(parts):
            msg = consumer.poll(5)
            assert msg is not None, f"no end of {topic} in sight"
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err.str()
                at_end.add(msg.partition() or 0)
                continue
            out.append(msg.value() or b"")
            out += [v if isinstance(v, bytes) else str(v).encode() for _, v in msg.headers() or []]
        return out
    finally:
        consumer.close()


def _upload_rows(settings: Settings) -> list[dict[str, Any]]:
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn:
        query = sql.SQL("SELECT * FROM {}.uploads").format(
            sql.Identifier(settings.read_model_schema)
        )
        return conn.execute(query).fetchall()


def test_files_outside_the_source_roots_are_refused(
    guarded: Settings, worker: ThreadedWorker, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not for the worker")
    (root / "link-out").symlink_to(outside)
    (root / "link-passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    make_file(root / "ok.bin", MiB)
    cases = {
        "shadow": "file:///etc/shadow",
        "passwd": "file:///etc/passwd",
        "outside": outside.as_uri(),
        "dotdot": f"file://{root}/../outside.bin",
        "symlink_out": (root / "link-out").as_uri(),
        "symlink_passwd": (root / "link-passwd").as_uri(),
        "symlinked_dir": f"file://{root}/etc/passwd",
    }
    with connect(guarded, actor="mallory") as mallory:
        uploads = {name: _attach(mallory, f"steal/{name}", src) for name, src in cases.items()}
        uploads["inside"] = _attach(mallory, "steal/inside", (root / "ok.bin").as_uri())
        got = _outcomes(mallory, uploads)
        assert got.pop("inside") == ("stored", None)  # the root itself is read
        assert got == dict.fromkeys(cases, ("compensated", "source_forbidden"))
        assert all(mallory.get(f"steal/{name}").blob is None for name in cases)
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    listed = make_s3_client(guarded).list_objects_v2(Bucket=guarded.s3_bucket)
    assert not any(passwd in o["Key"] for o in listed.get("Contents", []))


def test_a_fifo_is_refused_at_once_and_the_worker_goes_on(
    guarded: Settings, worker: ThreadedWorker, root: Path
) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    make_file(root / "next.bin", MiB)
    try:
        with connect(guarded, actor="mallory") as mallory:
            stuck = _attach(mallory, "fifo/a", fifo.as_uri())
            after = _attach(mallory, "fifo/b", (root / "next.bin").as_uri())
            assert _outcomes(mallory, {"fifo": stuck, "next": after}) == {
                "fifo": ("compensated", "source_not_regular"),
                "next": ("stored", None),
            }
    finally:
        # a worker blocked in open() (what this test guards against) is released here
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_http_to_internal_addresses_is_refused(
    guarded: Settings, worker: ThreadedWorker, internal: Origin, tmp_path: Path
) -> None:
    port = internal.server.server_address[1]
    (tmp_path / "public").mkdir()
    make_file(tmp_path / "public" / "ok.bin", MiB)
    public = Origin(
        tmp_path / "public", host=PUBLIC, redirects={"/jump": f"{internal.url}/secret.bin"}
    )
    cases = {
        "loopback": f"{internal.url}/secret.bin",
        "localhost": f"http://localhost:{port}/secret.bin",
        "mapped": f"http://[::ffff:127.0.0.1]:{port}/secret.bin",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "redirect": f"{public.url}/jump",
    }
    try:
        with connect(guarded, actor="mallory") as mallory:
            uploads = {name: _attach(mallory, f"ssrf/{name}", url) for name, url in cases.items()}
            uploads["public"] = _attach(mallory, "ssrf/public", f"{public.url}/ok.bin")
            got = _outcomes(mallory, uploads)
            assert got.pop("public") == ("stored", None)  # the allow-list opens its network
            assert got == dict.fromkeys(cases, ("compensated", "source_forbidden"))
        assert internal.hits == {}  # never contacted, not even through the redirect
        assert public.hits["/jump"] == 1
    finally:
        public.close()


def test_a_url_with_credentials_reaches_no_log_table_or_output(
    guarded: Settings, worker: ThreadedWorker, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    (tmp_path / "public").mkdir()
    make_file(tmp_path / "public" / "ok.bin", MiB)
    public = Origin(tmp_path / "public", host=PUBLIC)
    url = f"http://alice:{token}@{public.url.removeprefix('http://')}/ok.bin"
    try:
        with connect(guarded, actor="alice") as alice:
            alice.create("cred/a")
            with pytest.raises(ValidationError) as refused:
                alice.attach_blob("cred/a", url)
            assert token not in str(refused.value) and "SOURCE_HEADERS" in str(refused.value)
            with pytest.raises(ValidationError):  # `blobledger put` is refused the same way
                blob_cli.put_main(["cred/a", url, "--actor", "alice"], settings=guarded)

            # a client that skips the check: the worker refuses the URL, and neither its
            # log lines nor the compensation it publishes repeat the token
            command = UploadRequested(
                Envelope(object_id=alice.object_id("cred/a"), actor="alice", tenant=alice.tenant),
                upload_id=new_id(),
                source=url,
                deadline=now_us() + 600_000_000,
            )
            alice.publisher.publish(guarded.commands_topic, command)
            wait_for(lambda: worker.worker.handled >= 1, timeout=60, what="the command handled")
    finally:
        public.close()
    assert public.hits == {}
    codec = default_codec()
    events = _records(guarded, guarded.events_topic)
    assert events and not any(token.encode() in r for r in events)
    failed = [
        e
        for e in (codec.decode(r) for r in events if r.startswith(b"\xc3\x01"))
        if isinstance(e, BlobUploadFailed)
    ]
    assert [(f.upload_id, f.reason) for f in failed] == [(command.upload_id, "source_forbidden")]
    assert not any(token in repr(row) for row in _upload_rows(guarded))
    out, err = capfd.readouterr()
    assert "upload.started" in out + err and "***@" in out + err  # logged, redacted
    assert token not in out + err


def test_a_known_hash_is_not_a_capability(
    guarded: Settings,
    worker: ThreadedWorker,
    root: Path,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "alice-private.bin"
    sha = make_file(secret, 8 * MiB)
    forged = root / "forged.bin"
    make_file(forged, 8 * MiB)  # same size, other bytes
    (tmp_path / "public").mkdir()
    make_file(tmp_path / "public" / "forged.bin", 8 * MiB)
    public = Origin(tmp_path / "public", host=PUBLIC)
    try:
        with connect(guarded, actor="alice") as alice:
            stored = wait_terminal(alice, _attach(alice, "alice/private", str(secret)))
            assert stored.state == "stored" and stored.sha256 == sha
        # mallory knows the hash only: `blobledger put m/steal /nonexistent --sha256 <hash>`
        # is refused up front; a client that publishes it anyway gets nothing either
        with pytest.raises(ValidationError, match="does not exist"):
            blob_cli.put_main(
                ["m/steal", "/nonexistent", "--sha256", sha, "--actor", "mallory", "--json"],
                settings=guarded,
            )
        with connect(guarded, actor="mallory") as mallory:
            verdict = wait_terminal(
                mallory, _attach(mallory, "m/steal", "/nonexistent", declared_sha256=sha)
            )
        assert verdict.state == "compensated" and not verdict.dedup
        assert verdict.reason == "source_not_found" and verdict.key is None
        with connect(guarded, actor="mallory") as mallory:
            attempts = {
                "uri": _attach(mallory, "m/uri", "file:///nonexistent", declared_sha256=sha),
                "file": _attach(mallory, "m/file", forged.as_uri(), declared_sha256=sha),
                "http": _attach(mallory, "m/http", f"{public.url}/forged.bin", declared_sha256=sha),
            }
            assert _outcomes(mallory, attempts) == {
                "uri": ("compensated", "source_forbidden"),
                "file": ("compensated", "checksum_mismatch"),
                "http": ("compensated", "checksum_mismatch"),
            }
            for key in ("m/steal", "m/uri", "m/file", "m/http"):
                assert mallory.get(key).blob is None
                assert all(h.snapshot.blob is None for h in mallory.history(key))
    finally:
        public.close()
    rows = _upload_rows(guarded)
    assert [r["sha256"] for r in rows if r["declared_sha256"] == sha] == [None] * 4
    assert [r["state"] for r in rows if r["key"] == stored.key] == ["stored"]  # alice's only
    with connect(guarded, actor="alice") as alice:
        # the owner proves possession by reading: a dedup hit, nothing sent again
        again = wait_terminal(
            alice, _attach(alice, "alice/again", str(secret), declared_sha256=sha)
        )
        assert (again.state, again.dedup, again.sha256) == ("stored", True, sha)
