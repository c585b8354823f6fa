"""The embedded stack itself: idempotent up, a durable broker log, clear startup errors.

These tests run their own stacks in temp dirs on free ports (not the shared ``stack``
fixture), because they stop and restart whole stacks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from confluent_kafka import TopicPartition

from blobledger.infra.kafka import make_consumer, make_producer
from blobledger.infra.settings import Settings
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.testing.embedded import embedded_settings, private_dir
from blobledger.infra.topics import ensure_topics
from blobledger.schemas.errors import StackError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A temp dir outside pytest's tmp tree: see :func:`infra.testing.embedded.private_dir`."""
    with private_dir() as path:
        yield path


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobledger.infra.stack.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _env_for(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
    env.update(
        BLOBLEDGER_DATA_DIR=str(s.data_dir),
        BLOBLEDGER_PG_PORT=str(s.pg_port),
        BLOBLEDGER_S3_PORT=str(s.s3_port),
        BLOBLEDGER_KAFKA_PORT=str(s.kafka_port),
        BLOBLEDGER_WEED_MASTER_PORT=str(s.weed_master_port),
        BLOBLEDGER_WEED_VOLUME_PORT=str(s.weed_volume_port),
        BLOBLEDGER_WEED_FILER_PORT=str(s.weed_filer_port),
        BLOBLEDGER_LOG_S3_PORT=str(s.log_s3_port),
        BLOBLEDGER_LOG_WEED_MASTER_PORT=str(s.log_weed_master_port),
        BLOBLEDGER_LOG_WEED_VOLUME_PORT=str(s.log_weed_volume_port),
        BLOBLEDGER_LOG_WEED_FILER_PORT=str(s.log_weed_filer_port),
        BLOBLEDGER_BROKER_STORAGE=s.broker_storage,
    )
    return env


def test_cli_up_is_idempotent_and_status_is_healthy(stack_dir: Path) -> None:
    s = embedded_settings(Settings(), stack_dir / "stack", broker_storage="s3")
    env = _env_for(s)
    try:
        first = _cli(env, "up", "--json")
        assert first.returncode == 0, first.stderr
        pids = {n: v["pid"] for n, v in json.loads(first.stdout)["services"].items()}
        assert all(pids.values()), pids

        # the services outlived the CLI process that started them; a second up leaves them be
        t0 = time.monotonic()
        second = _cli(env, "up", "--json")
        assert second.returncode == 0, second.stderr
        assert {n: v["pid"] for n, v in json.loads(second.stdout)["services"].items()} == pids
        assert time.monotonic() - t0 < 15

        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["healthy"] is True
        assert set(report["services"]) == {"postgres", "s3", "log-store", "kafka"}
        assert report["services"]["log-store"]["endpoint"] == s.log_s3_url

        # and each endpoint answers a real client
        with psycopg.connect(s.dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("blobledger",)
        boto3.client(
            "s3",
            endpoint_url=s.s3_url,
            aws_access_key_id=s.s3_access_key,
            aws_secret_access_key=s.s3_secret_key,
            region_name=s.s3_region,
        ).head_bucket(Bucket=s.s3_bucket)
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    after = _cli(env, "status", "--json")
    assert after.returncode == 3
    assert not any(v["healthy"] or v["pid"] for v in json.loads(after.stdout)["services"].values())


def _consume(consumer, count: int, timeout: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    return got


def test_broker_log_and_committed_offsets_survive_a_stack_restart(stack_dir: Path) -> None:
    """THE durability test: the broker keeps its log in SeaweedFS S3, so ``down``/``up``
    (same data dir) loses neither messages nor the consumer group's committed offsets."""
    s = embedded_settings(Settings(), stack_dir / "stack", broker_storage="s3").with_(
        topic_prefix="durable", partitions=3
    )
    stack = Stack(s)
    try:
        stack.up()
        ensure_topics(s)
        topic, group, total, first_batch = s.events_topic, "durability-group", 300, 120

        producer = make_producer(s)
        for i in range(total):
            producer.produce(topic, key=f"k{i % 17}".encode(), value=f"m{i}".encode())
        assert producer.flush(30) == 0

        consumer = make_consumer(s, group)
        consumer.subscribe([topic])
        consumed = _consume(consumer, first_batch)
        assert len(consumed) >= first_batch
        next_offsets: dict[int, int] = {}
        for m in consumed:
            next_offsets[m.partition()] = max(next_offsets.get(m.partition(), 0), m.offset() + 1)
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in next_offsets.items()],
            asynchronous=False,
        )
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        committed_before = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        consumer.close()
        assert {p: o for p, o in committed_before.items() if o >= 0} == next_offsets

        del producer, consumer  # no client may hold the broker open across its restart

        stack.down()
        assert not any(st.pid for st in stack.status())
        stack.up()

        # every message is still on the topic, at the same offsets. (Not checked through
        # get_watermark_offsets: Tansu 0.6 answers ListOffsets(latest) with a wrong offset.)
        reader = make_consumer(s, "durability-reader")
        reader.subscribe([topic])
        after = _consume(reader, total)
        reader.close()
        assert sorted(m.value().decode() for m in after) == sorted(f"m{i}" for i in range(total))
        by_partition: dict[int, list[int]] = {}
        for m in after:
            by_partition.setdefault(m.partition(), []).append(m.offset())
        assert all(sorted(o) == list(range(len(o))) for o in by_partition.values())

        # the group's committed offsets survived, and it resumes exactly where it stopped
        resumed = make_consumer(s, group)
        committed_after = {tp.partition: tp.offset for tp in resumed.committed(parts, timeout=10)}
        assert committed_after == committed_before
        resumed.subscribe([topic])
        rest = _consume(resumed, total - len(consumed))
        time.sleep(1)  # and nothing beyond the rest arrives
        extra = resumed.poll(1.0)
        resumed.close()
        assert len(rest) == total - len(consumed)
        assert extra is None or extra.error() is not None
        seen = [m.value().decode() for m in consumed] + [m.value().decode() for m in rest]
        assert sorted(seen) == sorted(f"m{i}" for i in range(total))
    finally:
        stack.down()


def _occupy() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_a_service_whose_port_is_taken_fails_with_its_name_and_log(stack_dir: Path) -> None:
    blocker = _occupy()
    try:
        # only Postgres is embedded here, so nothing else is started
        s = Settings(
            data_dir=stack_dir,
            pg_port=blocker.getsockname()[1],
            kafka_bootstrap="127.0.0.1:1",
            s3_endpoint="http://127.0.0.1:1",
        )
        with pytest.raises(StackError) as err:
            Stack(s).up()
        assert err.value.service == "postgres"
        assert err.value.log_file == str(stack_dir / "logs" / "postgres.log")
        assert "postgres" in str(err.value) and "postgres.log" in str(err.value)
    finally:
        blocker.close()


def test_a_service_that_dies_during_startup_names_itself_and_its_log(stack_dir: Path) -> None:
    """A data dir from an unknown PostgreSQL version makes the server refuse to start."""
    s = Settings(
        data_dir=stack_dir,
        pg_port=embedded_settings(Settings(), stack_dir).pg_port,
        kafka_bootstrap="127.0.0.1:1",
        s3_endpoint="http://127.0.0.1:1",
    )
    (stack_dir / "postgres").mkdir()
    (stack_dir / "postgres" / "PG_VERSION").write_text("7\n")
    stack = Stack(s, timeout=30)
    try:
        with pytest.raises(StackError) as err:
            stack.up()
        assert err.value.service == "postgres"
        assert err.value.log_file == str(stack_dir / "logs" / "postgres.log")
        assert "postgres.log" in str(err.value)
    finally:
        stack.down()


def test_settings_fixture_gives_a_fresh_database_bucket_and_topics(
    stack,
    settings: Settings,  # type: ignore[no-untyped-def]
) -> None:
    """The shared fixtures: every endpoint resolved, per-test database, bucket and topics."""
    from blobledger.infra.kafka import make_admin
    from blobledger.infra.testing import RunningStack
    from blobledger.infra.testing.resources import database_name
    from blobledger.infra.topics import topic_names

    assert isinstance(stack, RunningStack)
    assert settings.kafka_bootstrap and settings.postgres_dsn and settings.s3_endpoint
    with psycopg.connect(settings.postgres_dsn) as conn:
        (db,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    assert db == database_name(settings.postgres_dsn) and db.startswith("bl_test_")
    boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    ).head_bucket(Bucket=settings.s3_bucket)
    metadata = make_admin(settings).list_topics(timeout=10)
    for name in topic_names(settings):
        assert len(metadata.topics[name].partitions) == settings.partitions


def test_stopping_the_blob_store_leaves_the_broker_and_its_log_running(stack_dir: Path) -> None:
    """The broker logs to its own SeaweedFS: ``stop_service("s3")`` stops the blob store
    only, produce and consume keep working, and the log store comes back with ``up``."""
    s = embedded_settings(Settings(), stack_dir / "stack", broker_storage="s3").with_(
        topic_prefix="apart", partitions=1
    )
    stack = Stack(s)
    try:
        stack.up()
        assert [st.name for st in stack.status()] == ["postgres", "s3", "log-store", "kafka"]
        assert (stack_dir / "stack" / "seaweed-log").is_dir()
        ensure_topics(s)
        stack.stop_service("s3")
        health = {st.name: st.healthy for st in stack.status()}
        assert health == {"postgres": True, "s3": False, "log-store": True, "kafka": True}

        producer = make_producer(s)
        t0 = time.monotonic()
        for i in range(20):
            producer.produce(s.events_topic, key=b"k", value=f"m{i}".encode())
        assert producer.flush(30) == 0
        assert time.monotonic() - t0 < 10
        consumer = make_consumer(s, "apart-reader")
        consumer.subscribe([s.events_topic])
        got = _consume(consumer, 20, timeout=60)
        consumer.close()
        assert [m.value().decode() for m in got] == [f"m{i}" for i in range(20)]
        del producer, consumer

        stack.up()  # brings back only what is down
        assert stack.healthy()
    finally:
        stack.down()
    assert not any(st.pid for st in stack.status())
