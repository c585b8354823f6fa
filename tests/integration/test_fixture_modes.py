"""The ``stack``/``settings`` fixtures keep one contract whatever runs the services.

Every contract test runs once per mode: ``embedded`` (pip-installed binaries) and ``docker``
(testcontainers; marked ``container``). This module overrides ``stack`` with a module-scoped
stack per mode, so the plugin's own ``settings`` fixture runs unchanged on top of both.
The docker-only tests check what users of a Docker engine rely on: teardown leaves no
container behind, also when a test fails, and a container that never gets ready fails with
an error naming its image. Without an engine the docker tests SKIP and say why.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from blobledger.infra.kafka import make_consumer, make_producer
from blobledger.infra.settings import Settings
from blobledger.infra.stack.seaweed import s3_client
from blobledger.infra.testing import RunningStack
from blobledger.infra.testing.docker_stack import (
    LABEL,
    LABEL_PID,
    DockerStackConfig,
    docker_stack,
    engine_available,
    engine_host,
    no_engine_reason,
)
from blobledger.infra.testing.settings import TestSettings
from blobledger.schemas.errors import StackError

pytestmark = pytest.mark.integration


def _require_engine() -> None:
    if not engine_available():
        pytest.skip(no_engine_reason())


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("embedded", id="embedded"),
        pytest.param("docker", id="docker", marks=pytest.mark.container),
    ],
)
def stack(request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    """A private stack of the requested mode for this module (overrides the plugin's)."""
    base, test = Settings.from_env(), TestSettings.from_env()
    if request.param == "docker":
        _require_engine()
        with docker_stack(base, DockerStackConfig.from_settings(test)) as running:
            yield running
    else:
        from blobledger.infra.testing.embedded import embedded_stack

        with embedded_stack(base, broker_storage=test.test_broker_storage) as running:
            yield running


# --- the contract, on every mode -----------------------------------------------------------------
def test_stack_settings_resolve_every_endpoint(
    stack: RunningStack, request: pytest.FixtureRequest
) -> None:
    assert stack.mode == request.node.callspec.params["stack"]
    s = stack.settings
    assert s.kafka_bootstrap and s.postgres_dsn and s.s3_endpoint
    assert not s.uses_embedded_stack  # code under test never starts services itself


def test_produce_and_consume_a_message(settings: Settings) -> None:
    key, value = b"object-1", f"hello {uuid.uuid4()}".encode()
    producer = make_producer(settings)
    producer.produce(settings.events_topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = make_consumer(settings, f"fixture-modes-{uuid.uuid4().hex[:8]}")
    try:
        consumer.subscribe([settings.events_topic])
        deadline = time.monotonic() + 60
        got = None
        while got is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got = msg
    finally:
        consumer.close()
    assert got is not None, "no message came back within 60 s"
    assert (got.key(), got.value()) == (key, value)


def test_postgres_runs_queries_in_a_fresh_database(settings: Settings) -> None:
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row and str(row[0]).startswith("bl_test_")
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("one",), ("two",)]


def test_s3_put_and_get_an_object(settings: Settings) -> None:
    client = s3_client(
        settings.s3_url,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_region,
        timeout=30,
    )
    body = os.urandom(256 * 1024)
    client.put_object(Bucket=settings.s3_bucket, Key="dir/blob.bin", Body=body)
    assert client.get_object(Bucket=settings.s3_bucket, Key="dir/blob.bin")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=settings.s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["dir/blob.bin"]


def test_a_stopped_postgres_comes_back_on_the_same_endpoint(
    stack: RunningStack, settings: Settings
) -> None:
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivor (v text)")
        conn.execute("INSERT INTO survivor VALUES ('kept')")
    stack.stop("postgres")
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(settings.dsn, connect_timeout=3).close()
    finally:
        stack.start("postgres")
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM survivor").fetchall() == [("kept",)]


def test_a_restarted_broker_keeps_its_log(stack: RunningStack, settings: Settings) -> None:
    if settings.broker_storage == "memory":
        pytest.skip("the broker keeps its log in memory here (BLOBLEDGER_TEST_BROKER_STORAGE)")
    producer = make_producer(settings)
    sent = [f"m{i}".encode() for i in range(20)]
    for value in sent:
        producer.produce(settings.events_topic, key=b"k", value=value)
    assert producer.flush(30) == 0
    del producer
    stack.stop("kafka")
    stack.start("kafka")
    consumer = make_consumer(settings, f"after-restart-{uuid.uuid4().hex[:8]}")
    got: list[bytes | None] = []
    try:
        consumer.subscribe([settings.events_topic])
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
    finally:
        consumer.close()
    assert got == sent


# --- docker only: teardown and readiness errors ------------------------------------------------
def _containers(**labels: str) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=engine_host() or "")
    try:
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        return [c.name for c in client.containers.list(all=True, filters=filters)]
    finally:
        client.close()


def _networks(stack_id: str) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=engine_host() or "")
    try:
        return [n.name for n in client.networks.list(filters={"label": f"{LABEL}={stack_id}"})]
    finally:
        client.close()


@pytest.mark.container
def test_teardown_leaves_no_container_even_when_the_test_fails() -> None:
    _require_engine()
    stack_id = ""
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        docker_stack(Settings.from_env()) as running,
    ):
        stack_id = running.stack_id
        assert len(_containers(**{LABEL: stack_id})) == 3
        raise RuntimeError("the test failed")
    assert stack_id
    assert _containers(**{LABEL: stack_id}) == []
    assert _networks(stack_id) == []


@pytest.mark.container
def test_a_container_that_exits_during_startup_names_its_image() -> None:
    _require_engine()
    base = Settings.from_env()
    config = DockerStackConfig.from_settings(TestSettings.from_env()).with_(
        commands={"postgres": ["postgres", "--no-such-option=1"]}, ready_timeout=60
    )
    mine = {LABEL: "", LABEL_PID: str(os.getpid())}
    before = set(_containers(**mine))
    with pytest.raises(StackError) as failed, docker_stack(base, config):
        pytest.fail("the stack started although Postgres cannot")
    message = str(failed.value)
    assert failed.value.service == "postgres"
    assert config.postgres_image in message
    assert "exited with code" in message
    assert "no_such_option" in message  # the container's own log tail explains why
    assert set(_containers(**mine)) <= before


@pytest.mark.container
def test_a_container_that_never_answers_times_out_naming_its_image() -> None:
    _require_engine()
    base = Settings.from_env()
    config = DockerStackConfig.from_settings(TestSettings.from_env()).with_(
        commands={"postgres": ["sleep", "600"]}, ready_timeout=4
    )
    mine = {LABEL: "", LABEL_PID: str(os.getpid())}
    before = set(_containers(**mine))
    t0 = time.monotonic()
    with (
        pytest.raises(StackError, match="did not become ready within 4 s") as failed,
        docker_stack(base, config),
    ):
        pytest.fail("the stack started although Postgres never answers")
    assert time.monotonic() - t0 < 60
    assert failed.value.service == "postgres"
    assert config.postgres_image in str(failed.value)
    assert set(_containers(**mine)) <= before
