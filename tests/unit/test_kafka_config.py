"""Security settings for a real Kafka cluster (SASL, TLS) pass through to every client."""

from __future__ import annotations

from typing import Any

import pytest

from blobledger.infra import kafka
from blobledger.infra.settings import Settings

SASL_TLS = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": "blobledger",
    "sasl.password": "s3cret",
    "ssl.ca.location": "/etc/ssl/certs/ca.pem",
}


def test_sasl_and_tls_reach_producer_consumer_and_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(kafka, name, lambda config: seen.append(config))
    s = Settings.from_env(
        {
            "BLOBLEDGER_KAFKA_BOOTSTRAP": "kafka-1.example:9093",
            "BLOBLEDGER_KAFKA_CONFIG": ",".join(f"{k}={v}" for k, v in SASL_TLS.items()),
        }
    )
    kafka.make_producer(s)
    kafka.make_consumer(s, "g")
    kafka.make_admin(s)
    assert len(seen) == 3
    for config in seen:
        assert config["bootstrap.servers"] == "kafka-1.example:9093"
        assert SASL_TLS.items() <= config.items()


def test_json_form_is_accepted_too() -> None:
    s = Settings.from_env({"BLOBLEDGER_KAFKA_CONFIG": '{"security.protocol": "SSL"}'})
    assert s.kafka_config == {"security.protocol": "SSL"}


def test_describe_masks_every_credential() -> None:
    s = Settings.from_env(
        {
            "BLOBLEDGER_KAFKA_CONFIG": ",".join(f"{k}={v}" for k, v in SASL_TLS.items()),
            "BLOBLEDGER_POSTGRES_DSN": "postgresql://app:pg-pass@db.example:5432/bl",
        }
    )
    shown = str(s.describe())
    for secret in ("s3cret", "pg-pass", s.s3_secret_key):
        assert secret not in shown
    assert s.describe()["kafka_config"]["sasl.username"] == "blobledger"
    kw = Settings.from_env({"BLOBLEDGER_POSTGRES_DSN": "host=db password=pw2 dbname=bl"})
    assert "pw2" not in str(kw.describe())
