"""pytest fixtures for every tier: ``stack`` (session) and ``settings`` (per test).

``BLOBLEDGER_TEST_STACK`` picks the services: ``embedded`` (a private embedded stack in a
temp dir on free ports), ``docker`` (testcontainers, ``infra.testing.docker_stack``),
``external`` (endpoints from ``BLOBLEDGER_*``), or ``auto`` = docker when a Docker-API
engine answers, else embedded. ``BLOBLEDGER_TEST_BROKER_STORAGE`` (s3|memory, default s3)
sets the embedded broker's log storage. Registered as the ``blobledger`` pytest11 plugin.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import structlog

from infra.settings import Settings
from infra.testing import RunningStack, ServiceName

log = structlog.get_logger(__name__)


class ExternalStack:
    """Services someone else runs: usable, but not ours to stop."""

    mode = "external"

    def __init__(self, settings: Settings):
        from infra.testing.embedded import resolved

        self.settings = resolved(settings)

    def stop(self, service: ServiceName) -> None:
        pytest.skip(f"external stack: cannot stop {service}")

    def start(self, service: ServiceName) -> None:
        pytest.skip(f"external stack: cannot start {service}")


def _docker_available() -> bool:
    try:
        from infra.testing.docker_stack import engine_available
    except ImportError:
        return False
    try:
        return bool(engine_available())
    except Exception:  # noqa: BLE001 - an engine that errors is not available
        return False


def resolve_mode(base: Settings) -> str:
    mode = (os.environ.get("BLOBLEDGER_TEST_STACK") or base.test_stack or "auto").lower()
    if mode == "auto":
        return "docker" if _docker_available() else "embedded"
    if mode not in ("docker", "embedded", "external"):
        raise pytest.UsageError(
            f"BLOBLEDGER_TEST_STACK={mode!r}: use auto, docker, embedded or external"
        )
    return mode


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    """The services for this test session; whatever it started is stopped at the end."""
    base = Settings.from_env()
    mode = resolve_mode(base)
    log.info("test_stack.mode", mode=mode)
    if mode == "external":
        yield ExternalStack(base)
    elif mode == "docker":
        from infra.testing.docker_stack import docker_stack

        with docker_stack(base) as running:
            yield running
    else:
        from infra.testing.embedded import embedded_stack

        storage = os.environ.get("BLOBLEDGER_TEST_BROKER_STORAGE", "s3")
        # a private dir outside pytest's tmp tree (see infra.testing.embedded.private_dir)
        with embedded_stack(base, broker_storage=storage) as running:
            yield running


@pytest.fixture
def settings(stack: RunningStack) -> Iterator[Settings]:
    """``stack.settings`` with a unique topic prefix, fresh database and bucket; topics made."""
    from infra.testing import resources
    from infra.topics import delete_topics, ensure_topics, topic_names

    base = stack.settings
    suffix = uuid.uuid4().hex[:12]
    admin_dsn = base.dsn
    db, bucket = f"bl_test_{suffix}", f"bl-test-{suffix}"
    dsn = resources.create_database(admin_dsn, db)
    try:
        resources.create_bucket(base, bucket)
        test_settings = base.with_(topic_prefix=f"t{suffix}", postgres_dsn=dsn, s3_bucket=bucket)
        ensure_topics(test_settings)
        yield test_settings
    finally:
        # best effort: a stopped service (outage test) must not turn a pass into an error
        with contextlib.suppress(Exception):
            resources.drop_database(admin_dsn, db)
        with contextlib.suppress(Exception):
            resources.delete_bucket(base, bucket)
        with contextlib.suppress(Exception):
            delete_topics(base, topic_names(base.with_(topic_prefix=f"t{suffix}")))
