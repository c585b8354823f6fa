"""What only the test fixtures read: the stack mode and the Docker-mode images.

These are kept out of :class:`blobledger.infra.settings.Settings` so the product's
settings (what the CLI, the projector and the workers see, ``describe`` and ``to_env``)
hold product fields only. The variable names are unchanged (``BLOBLEDGER_TEST_STACK``,
``BLOBLEDGER_DOCKER_KAFKA_IMAGE`` ...), and so is the ``BLOBLEDGER_CONFIG`` file: both
objects are built by the same :func:`blobledger.infra.settings.load_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from blobledger.infra.settings import Settings, load_settings


@dataclass(frozen=True)
class TestSettings:
    #: not a test class, whatever pytest's name rule says
    __test__ = False

    #: auto | docker | embedded | external  (auto: tests marked ``container`` on Docker)
    test_stack: str = "auto"
    #: broker log storage of stacks started for tests: s3 | memory
    test_broker_storage: str = "s3"
    #: images of the Docker-mode stack (what a Docker user expects by default); this
    #: machine's CI points them at locally built ones (infra/containers/engine.sh --env)
    docker_kafka_image: str = "apache/kafka:3.9.0"
    docker_postgres_image: str = "postgres:16"
    docker_s3_image: str = "chrislusf/seaweedfs:4.48"
    #: apache (KRaft env config) | tansu; empty = guessed from the Kafka image name
    docker_broker_flavor: str = ""
    docker_ready_timeout: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TestSettings:
        """From ``BLOBLEDGER_*`` keys over the ``BLOBLEDGER_CONFIG`` file, like ``Settings``;
        the file's product keys belong to ``Settings`` and are not errors here."""
        return load_settings(cls, env, shared_keys=_product_keys)


def _product_keys() -> frozenset[str]:
    return frozenset(f.name for f in fields(Settings))
