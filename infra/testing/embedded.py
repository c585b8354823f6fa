"""A private embedded stack for a test session: its own temp dir and free ports.

Free ports (not the defaults) keep a developer's running ``blobledger stack`` untouched.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blobledger.infra.freeports import free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.stack.seaweed import grpc_port, stack_ports
from blobledger.infra.testing import ServiceName


def embedded_settings(base: Settings, data_dir: Path, *, broker_storage: str = "s3") -> Settings:
    """``base`` pointed at an embedded stack in ``data_dir`` on free ports."""
    # a developer's default-port stack may be down now and started later: keep clear of it
    (s3, master, volume, filer, log_s3, log_master, log_volume, log_filer, pg, kafka) = free_ports(
        10, partner=grpc_port, with_partner=8, avoid=stack_ports(Settings())
    )
    return base.with_(
        data_dir=data_dir,
        kafka_bootstrap=None,
        postgres_dsn=None,
        s3_endpoint=None,
        s3_port=s3,
        weed_master_port=master,
        weed_volume_port=volume,
        weed_filer_port=filer,
        log_s3_port=log_s3,
        log_weed_master_port=log_master,
        log_weed_volume_port=log_volume,
        log_weed_filer_port=log_filer,
        pg_port=pg,
        kafka_port=kafka,
        broker_storage=broker_storage,
    )


def resolved(settings: Settings) -> Settings:
    """Endpoints written out, so code under test never tries to start anything itself."""
    return settings.with_(
        kafka_bootstrap=settings.bootstrap_servers,
        postgres_dsn=settings.dsn,
        s3_endpoint=settings.s3_url,
    )


class EmbeddedRunningStack:
    """:class:`infra.testing.RunningStack` over an :class:`infra.stack.launcher.Stack`."""

    mode = "embedded"

    def __init__(self, stack: Stack):
        self.stack = stack
        self.settings = resolved(stack.settings)

    def stop(self, service: ServiceName) -> None:
        self.stack.stop_service(service)

    def start(self, service: ServiceName) -> None:
        self.stack.start_service(service)


@contextmanager
def private_dir(prefix: str = "blobledger-stack-") -> Iterator[Path]:
    """A fresh temp dir outside pytest's ``tmp_path`` tree, removed afterwards.

    Why not ``tmp_path``: as root, PostgreSQL runs as the ``embedded_postgres`` user and
    must traverse to its data dir, but every pytest session that starts (ours or a
    parallel one) chmods ``/tmp/pytest-of-root`` back to 0700, and the server then fails
    with "pg_hba.conf: Permission denied" (at start, or later at runtime). 0711: that user
    (and any other) may pass through to a data dir below, not list what is here; the
    stack itself never widens a directory outside its data dir."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def embedded_stack(
    base: Settings, data_dir: Path | None = None, *, broker_storage: str = "s3"
) -> Iterator[EmbeddedRunningStack]:
    """Start a private stack; always stop it again, even when startup or a test failed.

    Leave ``data_dir`` unset (a :func:`private_dir` is used and removed); see there why a
    pytest ``tmp_path`` is a bad place for it when running as root."""
    with contextlib.ExitStack() as cleanup:
        if data_dir is None:
            data_dir = cleanup.enter_context(private_dir())
        stack = Stack(embedded_settings(base, data_dir, broker_storage=broker_storage))
        try:
            stack.up()
            yield EmbeddedRunningStack(stack)
        finally:
            stack.down()
