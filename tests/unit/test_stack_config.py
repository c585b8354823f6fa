"""How the embedded services are launched (flags, env), checked without starting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.errors import ConfigurationError
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.stack.seaweed import SeaweedS3, grpc_port
from infra.stack.tansu import TansuKafka
from infra.testing.embedded import free_ports


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
    assert f"-bucket={s.s3_bucket},{s.broker_bucket}" in argv
    ports = [int(a.split("=")[1]) for a in argv if ".port" in a and a.split("=")[1].isdigit()]
    assert all(0 < p <= 65535 for p in ports if p)


def test_broker_bucket_only_when_the_broker_logs_to_s3(tmp_path: Path) -> None:
    assert SeaweedS3(Settings(broker_storage="memory")).buckets == ["blobledger-blobs"]


def test_tansu_storage_and_environment(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka_port=1234, s3_port=4321)
    kafka = TansuKafka(s)
    assert "--storage-engine=s3://blobledger-log/" in kafka.argv()
    assert "--advertised-listener-url=tcp://127.0.0.1:1234" in kafka.argv()
    env = kafka.env()
    assert env["AWS_ENDPOINT"] == "http://127.0.0.1:4321" and env["AWS_ALLOW_HTTP"] == "true"
    assert env["AWS_ACCESS_KEY_ID"] == s.s3_access_key
    memory = TansuKafka(s.with_(broker_storage="memory"))
    assert "--storage-engine=memory://tansu/" in memory.argv()
    assert "AWS_ENDPOINT" not in memory.env()
    with pytest.raises(ConfigurationError, match="BROKER_STORAGE"):
        TansuKafka(s.with_(broker_storage="postgres")).argv()


def test_only_services_without_an_external_endpoint_are_managed() -> None:
    s = Settings(kafka_bootstrap="broker:9092", s3_endpoint="https://s3.example")
    assert [svc.name for svc in Stack(s).embedded] == ["postgres"]
    assert [svc.name for svc in Stack(Settings()).embedded] == ["postgres", "s3", "kafka"]
    assert Stack(Settings()).service("tansu").name == "kafka"


def test_free_ports_are_distinct_and_leave_grpc_partners_free() -> None:
    ports = free_ports(6, with_grpc=4)
    partners = {grpc_port(p) for p in ports[:4]}
    assert len(set(ports)) == 6 and not partners & set(ports)
