"""How the embedded services are launched (flags, env), checked without starting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from blobledger.infra.freeports import ephemeral_range, free_ports
from blobledger.infra.settings import Settings
from blobledger.infra.stack.launcher import Stack
from blobledger.infra.stack.seaweed import (
    LOG_STORE_FLAGS,
    SeaweedLogStore,
    SeaweedS3,
    grpc_port,
    stack_ports,
)
from blobledger.infra.stack.tansu import TansuKafka
from blobledger.infra.testing.docker_stack import DockerStackConfig
from blobledger.infra.testing.settings import TestSettings
from blobledger.schemas.errors import ConfigurationError, StackError


def test_grpc_ports_stay_in_range() -> None:
    assert grpc_port(8333) == 18333
    assert grpc_port(59333) == 49333  # +10000 would pass 65535


def test_weed_binds_loopback_only_with_every_port_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    argv = SeaweedS3(s).argv()
    assert "-ip.bind=127.0.0.1" in argv and "-ip=127.0.0.1" in argv
    for flag in ("-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"):
        assert flag in argv
    assert f"-s3.port={s.s3_port}" in argv and f"-master.port={s.weed_master_port}" in argv
    assert f"-bucket={s.s3_bucket}" in argv  # blobs only: the broker's log has its own store
    ports = [int(a.split("=")[1]) for a in argv if ".port" in a and a.split("=")[1].isdigit()]
    assert all(0 < p <= 65535 for p in ports if p)


def _ports(argv: list[str]) -> set[int]:
    """Every fixed port a weed argv listens on (HTTP and gRPC; admin ports are picked free)."""
    return {
        int(a.split("=")[1])
        for a in argv
        if ".port" in a
        and not a.startswith("-admin")
        and a.split("=")[1].isdigit()
        and int(a.split("=")[1])
    }


def test_the_broker_log_has_its_own_seaweed_apart_from_the_blob_store(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    blobs, log = SeaweedS3(s), SeaweedLogStore(s)
    argv = log.argv()
    assert log.name == "log-store" and log.embedded
    assert f"-dir={tmp_path.absolute() / 'seaweed-log'}" in argv and log.identity in argv
    assert f"-bucket={s.broker_bucket}" in argv
    assert "-ip.bind=127.0.0.1" in argv and "-admin.ui=false" in argv
    for flag in LOG_STORE_FLAGS:  # small volumes, bounded count: a modest footprint
        assert flag in argv
    assert f"-s3.port={s.log_s3_port}" in argv and f"-master.port={s.log_weed_master_port}" in argv
    assert f"-volume.port={s.log_weed_volume_port}" in argv
    assert f"-filer.port={s.log_weed_filer_port}" in argv
    assert log.endpoint == f"http://127.0.0.1:{s.log_s3_port}" != blobs.endpoint
    # separate processes: no shared data dir, no shared port (HTTP or gRPC)
    assert blobs.identity != log.identity and blobs.dir != log.dir
    assert not _ports(blobs.argv()) & _ports(argv)
    assert all(0 < p <= 65535 for p in _ports(argv))


def test_log_store_only_when_the_embedded_broker_logs_to_s3() -> None:
    assert SeaweedS3(Settings(broker_storage="memory")).buckets == ["blobledger-blobs"]
    assert not SeaweedLogStore(Settings(broker_storage="memory")).embedded
    assert not SeaweedLogStore(Settings(kafka_bootstrap="broker:9092")).embedded
    assert [svc.name for svc in Stack(Settings(broker_storage="memory")).embedded] == [
        "postgres",
        "s3",
        "kafka",
    ]


def test_tansu_storage_and_environment(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_port=1234, s3_port=4321, log_s3_port=4322)
    kafka = TansuKafka(s)
    assert "--storage-engine=s3://blobledger-log/" in kafka.argv()
    assert "--advertised-listener-url=tcp://127.0.0.1:1234" in kafka.argv()
    env = kafka.env()
    # the log store, not the blob store
    assert env["AWS_ENDPOINT"] == "http://127.0.0.1:4322" and env["AWS_ALLOW_HTTP"] == "true"
    assert env["AWS_ACCESS_KEY_ID"] == s.s3_access_key
    memory = TansuKafka(s.with_(broker_storage="memory"))
    assert "--storage-engine=memory://tansu/" in memory.argv()
    assert "AWS_ENDPOINT" not in memory.env()
    with pytest.raises(ConfigurationError, match="BROKER_STORAGE"):
        TansuKafka(s.with_(broker_storage="postgres")).argv()


def test_only_services_without_an_external_endpoint_are_managed() -> None:
    s = Settings(kafka_bootstrap="broker:9092", s3_endpoint="https://s3.example")
    assert [svc.name for svc in Stack(s).embedded] == ["postgres"]
    assert [svc.name for svc in Stack(Settings()).embedded] == [
        "postgres",
        "s3",
        "log-store",
        "kafka",
    ]
    assert Stack(Settings()).service("tansu").name == "kafka"
    assert Stack(Settings()).service("broker-s3").name == "log-store"
    with pytest.raises(StackError, match="unknown service"):
        Stack(Settings()).service("nope")


def test_up_of_the_broker_brings_its_log_store_and_stop_s3_means_the_blob_store() -> None:
    stack = Stack(Settings())
    assert stack._wanted(["kafka"]) == {"kafka", "log-store"}
    assert stack._wanted(["s3"]) == {"s3"}
    assert stack.service("s3").endpoint == Settings().s3_url
    assert stack.service("log-store").endpoint == Settings().log_s3_url


def test_default_ports_do_not_collide() -> None:
    every = stack_ports(Settings())
    assert len(every) == 18  # 8 SeaweedFS HTTP ports, their gRPC partners, Postgres, Kafka
    assert len(set(every)) == len(every)


def test_free_ports_are_distinct_and_leave_grpc_partners_free() -> None:
    ports = free_ports(10, partner=grpc_port, with_partner=8)
    partners = {grpc_port(p) for p in ports[:8]}
    assert len(set(ports)) == 10 and len(partners) == 8 and not partners & set(ports)


def test_free_ports_stay_below_the_ephemeral_range_and_clear_of_avoided_ones() -> None:
    # an outgoing connection may take any ephemeral port between pick and bind
    low = ephemeral_range()[0]
    avoid = set(range(10000, 20000))
    for _ in range(20):
        ports = free_ports(10, partner=grpc_port, with_partner=8, avoid=avoid)
        every = set(ports) | {grpc_port(p) for p in ports[:8]}
        assert all(p < low for p in every), every
        assert not every & avoid


def test_docker_stack_config_comes_from_the_test_settings() -> None:
    default = DockerStackConfig.from_settings(TestSettings())
    assert (default.kafka_image, default.broker_flavor, default.broker_storage) == (
        "apache/kafka:3.9.0",
        "apache",
        "s3",
    )
    assert default.ready_timeout == 120.0
    tansu = TestSettings(docker_kafka_image="localhost/Tansu:dev", test_broker_storage="memory")
    config = DockerStackConfig.from_settings(tansu)
    assert (config.broker_flavor, config.broker_storage, config.tansu_on_s3) == (
        "tansu",
        "memory",
        False,
    )
    with pytest.raises(StackError, match="BLOBLEDGER_DOCKER_BROKER_FLAVOR"):
        DockerStackConfig.from_settings(TestSettings(docker_broker_flavor="redpanda"))
    with pytest.raises(StackError, match="broker storage"):
        DockerStackConfig.from_settings(TestSettings(test_broker_storage="disk"))


def test_the_test_stack_mode_is_checked_and_auto_splits_on_the_container_mark() -> None:
    from blobledger.infra.pytest_plugin import mode_for, requested_mode

    assert requested_mode(TestSettings()) == "auto"
    assert requested_mode(TestSettings(test_stack="Docker")) == "docker"
    assert requested_mode(TestSettings(test_stack="")) == "auto"
    with pytest.raises(pytest.UsageError, match="BLOBLEDGER_TEST_STACK"):
        requested_mode(TestSettings(test_stack="kubernetes"))
    assert mode_for("auto", container_marked=True) == "docker"
    assert mode_for("auto", container_marked=False) == "embedded"
    assert mode_for("external", container_marked=True) == "external"
