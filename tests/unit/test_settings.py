"""Settings: env parsing, the TOML file, clear errors, and endpoint resolution; the test
fixtures' own settings (TestSettings) read the same variables and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from blobledger.infra.settings import Settings
from blobledger.infra.testing.settings import TestSettings
from blobledger.schemas.errors import ConfigurationError


def test_defaults_point_at_the_embedded_stack() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.uses_embedded_stack and s.embedded_kafka and s.embedded_postgres and s.embedded_s3
    assert s.bootstrap_servers == f"127.0.0.1:{s.kafka_port}"
    # a data dir without the password file `stack up` writes (./.blobledger may have one)
    nowhere = s.with_(data_dir=Path("/nonexistent"))
    assert nowhere.dsn == f"postgresql://postgres@127.0.0.1:{s.pg_port}/blobledger"
    assert s.s3_url == f"http://127.0.0.1:{s.s3_port}"
    assert s.broker_storage == "s3"  # durable by default
    assert s.data_dir == Path(".blobledger")


def test_env_values_are_coerced_to_field_types() -> None:
    s = Settings.from_env(
        {
            "BLOBLEDGER_DATA_DIR": "/var/lib/bl",
            "BLOBLEDGER_PARTITIONS": "12",
            "BLOBLEDGER_WAIT_TIMEOUT_SECONDS": "2.5",
            "BLOBLEDGER_TOPIC_PREFIX": "acme",
            "BLOBLEDGER_BROKER_STORAGE": "memory",
            "OTHER_VAR": "ignored",
            "BLOBLEDGER_NOT_A_SETTING": "ignored too",  # unknown env keys are not errors
        }
    )
    assert s.data_dir == Path("/var/lib/bl")
    assert s.partitions == 12 and isinstance(s.partitions, int)
    assert s.wait_timeout_seconds == 2.5
    assert s.broker_storage == "memory"
    assert s.topics == ("acme.events", "acme.blob-commands", "acme.dlq")


@pytest.mark.parametrize(
    "raw",
    [
        '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}',
        "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
    ],
)
def test_kafka_config_accepts_json_or_key_value_pairs(raw: str) -> None:
    s = Settings.from_env({"BLOBLEDGER_KAFKA_CONFIG": raw})
    assert dict(s.kafka_config) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


def test_external_endpoints_replace_the_embedded_ones() -> None:
    s = Settings.from_env(
        {
            "BLOBLEDGER_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
            "BLOBLEDGER_POSTGRES_DSN": "postgresql://app@db.internal/ledger",
            "BLOBLEDGER_S3_ENDPOINT": "https://s3.eu-west-1.amazonaws.com",
        }
    )
    assert not s.uses_embedded_stack
    assert s.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.dsn == "postgresql://app@db.internal/ledger"
    assert s.s3_url == "https://s3.eu-west-1.amazonaws.com"


def test_one_external_service_leaves_the_others_embedded() -> None:
    s = Settings.from_env({"BLOBLEDGER_S3_ENDPOINT": "http://minio:9000"})
    assert not s.embedded_s3 and s.embedded_kafka and s.embedded_postgres
    assert s.uses_embedded_stack


def test_empty_optional_endpoint_means_embedded() -> None:
    s = Settings.from_env({"BLOBLEDGER_KAFKA_BOOTSTRAP": ""})
    assert s.kafka_bootstrap is None and s.embedded_kafka


def test_ports_move_the_embedded_endpoints() -> None:
    s = Settings.from_env(
        {
            "BLOBLEDGER_PG_PORT": "6000",
            "BLOBLEDGER_KAFKA_PORT": "6001",
            "BLOBLEDGER_S3_PORT": "6002",
        }
    )
    assert s.dsn.endswith("127.0.0.1:6000/blobledger")
    assert s.bootstrap_servers == "127.0.0.1:6001"
    assert s.s3_url == "http://127.0.0.1:6002"


def test_toml_file_is_read_and_env_overrides_it(tmp_path: Path) -> None:
    cfg = tmp_path / "blobledger.toml"
    cfg.write_text(
        'topic_prefix = "from-file"\npartitions = 3\ns3_bucket = "file-bucket"\n'
        '[kafka_config]\n"client.id" = "ledger"\n'
    )
    s = Settings.from_env({"BLOBLEDGER_CONFIG": str(cfg), "BLOBLEDGER_PARTITIONS": "9"})
    assert s.topic_prefix == "from-file"
    assert s.s3_bucket == "file-bucket"
    assert s.partitions == 9  # env wins over the file
    assert dict(s.kafka_config) == {"client.id": "ledger"}


def test_missing_or_broken_toml_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="BLOBLEDGER_CONFIG"):
        Settings.from_env({"BLOBLEDGER_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("partitions = = 3\n")
    with pytest.raises(ConfigurationError, match="cannot read settings file"):
        Settings.from_env({"BLOBLEDGER_CONFIG": str(bad)})


def test_unknown_key_in_file_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("partitons = 3\n")
    with pytest.raises(ConfigurationError, match="partitons"):
        Settings.from_env({"BLOBLEDGER_CONFIG": str(cfg)})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BLOBLEDGER_PARTITIONS", "six"),
        ("BLOBLEDGER_WAIT_TIMEOUT_SECONDS", "soon"),
        ("BLOBLEDGER_KAFKA_CONFIG", "no-equals-sign"),
        ("BLOBLEDGER_KAFKA_CONFIG", "{not json"),
    ],
)
def test_invalid_values_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        Settings.from_env({key: value})


def test_with_returns_a_changed_copy_and_settings_are_frozen() -> None:
    s = Settings()
    t = s.with_(topic_prefix="other", kafka_bootstrap="k:1")
    assert (s.topic_prefix, s.kafka_bootstrap) == ("blobledger", None)
    assert (t.topic_prefix, t.bootstrap_servers) == ("other", "k:1")
    with pytest.raises(AttributeError):
        s.partitions = 1  # type: ignore[misc]


def test_describe_masks_the_secret_and_is_plain_data() -> None:
    d = Settings(s3_secret_key="hunter2").describe()
    assert d["s3_secret_key"] == "***"
    assert "hunter2" not in repr(d)
    assert d["data_dir"] == ".blobledger"


def test_to_env_round_trips_through_from_env() -> None:
    s = Settings(
        data_dir=Path("/tmp/x"),
        kafka_bootstrap="k:1",
        kafka_config={"client.id": "c"},
        partitions=2,
        wait_timeout_seconds=1.5,
    )
    assert Settings.from_env(s.to_env()) == s


def test_boolean_settings_take_the_usual_spellings_and_refuse_others() -> None:
    for word, value in (("on", True), ("TRUE", True), ("1", True), ("off", False), ("no", False)):
        assert (
            Settings.from_env(
                {"BLOBLEDGER_PROJECTOR_SYNCHRONOUS_COMMIT": word}
            ).projector_synchronous_commit
            is value
        )
    with pytest.raises(ConfigurationError, match="PROJECTOR_SYNCHRONOUS_COMMIT"):
        Settings.from_env({"BLOBLEDGER_PROJECTOR_SYNCHRONOUS_COMMIT": "maybe"})


# --- the test fixtures' settings -----------------------------------------------------------
TEST_ENV = {
    "BLOBLEDGER_TEST_STACK": "docker",
    "BLOBLEDGER_TEST_BROKER_STORAGE": "memory",
    "BLOBLEDGER_DOCKER_KAFKA_IMAGE": "localhost/tansu:dev",
    "BLOBLEDGER_DOCKER_POSTGRES_IMAGE": "localhost/pg:15",
    "BLOBLEDGER_DOCKER_S3_IMAGE": "minio/minio",
    "BLOBLEDGER_DOCKER_BROKER_FLAVOR": "tansu",
    "BLOBLEDGER_DOCKER_READY_TIMEOUT": "30",
}


def test_test_and_docker_fields_are_not_product_settings() -> None:
    product = set(Settings().describe())
    assert not any(name.startswith(("test_", "docker_")) for name in product)
    assert not any(key.startswith(tuple(TEST_ENV)) for key in Settings().to_env())
    assert Settings.from_env(TEST_ENV) == Settings()  # the product ignores them


def test_test_settings_keep_their_variable_names_and_defaults() -> None:
    assert TestSettings.from_env({}) == TestSettings()
    assert TestSettings().test_stack == "auto" and TestSettings().test_broker_storage == "s3"
    t = TestSettings.from_env({**TEST_ENV, "BLOBLEDGER_PARTITIONS": "3"})
    assert (t.test_stack, t.test_broker_storage) == ("docker", "memory")
    assert (t.docker_kafka_image, t.docker_postgres_image, t.docker_s3_image) == (
        "localhost/tansu:dev",
        "localhost/pg:15",
        "minio/minio",
    )
    assert t.docker_broker_flavor == "tansu"
    assert t.docker_ready_timeout == 30.0 and isinstance(t.docker_ready_timeout, float)
    with pytest.raises(ConfigurationError, match="BLOBLEDGER_DOCKER_READY_TIMEOUT"):
        TestSettings.from_env({"BLOBLEDGER_DOCKER_READY_TIMEOUT": "soon"})


def test_one_settings_file_serves_product_and_test_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "blobledger.toml"
    cfg.write_text('partitions = 3\ntest_stack = "embedded"\ndocker_ready_timeout = 5\n')
    env = {"BLOBLEDGER_CONFIG": str(cfg), "BLOBLEDGER_TEST_STACK": "external"}
    assert Settings.from_env(env).partitions == 3
    t = TestSettings.from_env(env)
    assert (t.test_stack, t.docker_ready_timeout) == ("external", 5.0)  # env wins over the file


def test_a_typo_in_the_file_is_an_error_for_both_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('partitions = 3\ntest_stak = "docker"\n')
    for cls in (Settings, TestSettings):
        with pytest.raises(ConfigurationError, match="test_stak"):
            cls.from_env({"BLOBLEDGER_CONFIG": str(cfg)})
