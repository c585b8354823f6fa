"""pytest fixtures for every tier: ``stack`` (services) and ``settings`` (per test).

``BLOBLEDGER_TEST_STACK`` picks the services: ``embedded`` (a private embedded stack in a
temp dir on free ports), ``docker`` (testcontainers, ``infra.testing.docker_stack``),
``external`` (endpoints from ``BLOBLEDGER_*``), or ``auto`` (the default): tests marked
``container`` run on a Docker-API engine (skipped, with the reason, when none answers)
and all others on the embedded stack. Each stack is started once per session.
``BLOBLEDGER_TEST_BROKER_STORAGE`` (s3|memory, default s3) sets the embedded broker's log
storage. These test-only variables are :class:`infra.testing.settings.TestSettings`; the
stacks' services get :class:`infra.settings.Settings`. Registered as the ``blobledger``
pytest11 plugin.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
import structlog

from blobledger.infra.settings import Settings
from blobledger.infra.testing import RunningStack, ServiceName
from blobledger.infra.testing.settings import TestSettings
from blobledger.schemas.errors import StackError

log = structlog.get_logger(__name__)


class ExternalStack:
    """Services someone else runs: usable, but not ours to stop."""

    mode = "external"

    def __init__(self, settings: Settings):
        from blobledger.infra.testing.embedded import resolved

        self.settings = resolved(settings)

    def stop(self, service: ServiceName) -> None:
        pytest.skip(f"external stack: cannot stop {service}")

    def start(self, service: ServiceName) -> None:
        pytest.skip(f"external stack: cannot start {service}")


def requested_mode(test: TestSettings) -> str:
    mode = (test.test_stack or "auto").lower()
    if mode not in ("auto", "docker", "embedded", "external"):
        raise pytest.UsageError(
            f"BLOBLEDGER_TEST_STACK={mode!r}: use auto, docker, embedded or external"
        )
    return mode


def mode_for(requested: str, *, container_marked: bool) -> str:
    """``auto`` sends tests marked ``container`` to a Docker-API engine and the rest to the
    embedded stack; an explicit mode applies to every test."""
    if requested == "auto":
        return "docker" if container_marked else "embedded"
    return requested


class StackPool:
    """Starts at most one stack per mode, on first use, and stops them at session end.
    A docker stack that cannot start is remembered, so every test that needs it reports
    the same reason instead of retrying for minutes."""

    def __init__(self, exits: contextlib.ExitStack, base: Settings, test: TestSettings) -> None:
        self.exits = exits
        self.base = base
        self.test = test
        self.running: dict[str, RunningStack] = {}
        self.failed: dict[str, str] = {}

    def get(self, mode: str) -> RunningStack:
        if mode in self.running:
            return self.running[mode]
        if mode in self.failed:
            raise StackError(self.failed[mode], service=mode)
        log.info("test_stack.start", mode=mode)
        try:
            self.running[mode] = self.exits.enter_context(self._start(mode))
        except StackError as e:
            self.failed[mode] = str(e)
            raise
        return self.running[mode]

    def _start(self, mode: str) -> contextlib.AbstractContextManager[RunningStack]:
        if mode == "external":
            return contextlib.nullcontext(ExternalStack(self.base))
        if mode == "docker":
            from blobledger.infra.testing.docker_stack import DockerStackConfig, docker_stack

            return docker_stack(self.base, DockerStackConfig.from_settings(self.test))
        from blobledger.infra.testing.embedded import embedded_stack

        storage = self.test.test_broker_storage
        # a private dir outside pytest's tmp tree (see infra.testing.embedded.private_dir)
        return embedded_stack(self.base, broker_storage=storage)


@pytest.fixture(scope="session")
def blobledger_stacks() -> Iterator[StackPool]:
    """The stacks this session started, per mode; all stopped when the session ends."""
    with contextlib.ExitStack() as exits:
        yield StackPool(exits, Settings.from_env(), TestSettings.from_env())


@pytest.fixture
def stack(request: pytest.FixtureRequest, blobledger_stacks: StackPool) -> RunningStack:
    """The services for this test (see the module docstring for how the mode is chosen).
    Without a reachable Docker-API engine, docker-mode tests SKIP and say why."""
    requested = requested_mode(blobledger_stacks.test)
    mode = mode_for(
        requested, container_marked=request.node.get_closest_marker("container") is not None
    )
    if mode == "docker":
        from blobledger.infra.testing.docker_stack import engine_available, no_engine_reason

        if not engine_available():
            pytest.skip(no_engine_reason())
        if requested == "auto":
            try:
                return blobledger_stacks.get(mode)
            except StackError as e:
                pytest.skip(
                    f"docker stack could not start here: {e} "
                    "(run infra/containers/engine.sh and export its --env output)"
                )
    return blobledger_stacks.get(mode)


@pytest.fixture
def settings(stack: RunningStack) -> Iterator[Settings]:
    """``stack.settings`` with a unique topic prefix, fresh database and bucket; topics made."""
    from blobledger.infra.testing import resources
    from blobledger.infra.topics import delete_topics, ensure_topics, topic_names

    base = stack.settings
    suffix = uuid.uuid4().hex[:12]
    admin_dsn = base.dsn
    db, bucket = f"bl_test_{suffix}", f"bl-test-{suffix}"
    dsn = resources.create_database(admin_dsn, db)
    try:
        resources.create_bucket(base, bucket)
        # private consumer groups too: a SIGKILLed member of a shared group would stall
        # the next test's join for a whole session timeout
        test_settings = base.with_(
            topic_prefix=f"t{suffix}",
            postgres_dsn=dsn,
            s3_bucket=bucket,
            projector_group=f"t{suffix}-projector",
            worker_group=f"t{suffix}-worker",
        )
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
