"""Test support: the running-stack contract the pytest fixtures yield, and its implementations.

``embedded.py`` runs a private embedded stack on free ports, ``external`` wraps settings
from the environment, and ``docker_stack.py`` (testcontainers) starts the same services as
containers. All three satisfy :class:`RunningStack`. ``settings.py`` holds what only the
fixtures read (stack mode, broker storage of test stacks, Docker images).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from blobledger.infra.settings import Settings

#: "s3" is the blob store (in every mode); "log-store" is the embedded broker's own S3,
#: so stopping "s3" never stops the broker (the metadata path)
ServiceName = Literal["kafka", "postgres", "s3", "log-store"]


@runtime_checkable
class RunningStack(Protocol):
    #: "embedded" | "docker" | "external"
    mode: str
    #: every endpoint resolved: kafka_bootstrap, postgres_dsn and s3_endpoint are set
    settings: Settings

    def stop(self, service: ServiceName) -> None:
        """Stop one service (outage tests); the others keep running. ``"s3"`` is the blob
        store: the broker's log never lives there. External stacks call ``pytest.skip``."""

    def start(self, service: ServiceName) -> None:
        """Start it again and return once it answers."""
