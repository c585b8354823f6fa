"""Create the project's topics, idempotently, and wait until the broker's metadata shows them.

Waiting matters: a create request can return before every partition has a leader, and a
producer that races it gets UNKNOWN_TOPIC_OR_PART.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from blobledger.infra.kafka import make_admin, translate
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import TimeoutExpired

log = structlog.get_logger(__name__)


def topic_names(settings: Settings, extra: Iterable[str] = ()) -> list[str]:
    """events, blob-commands, dlq and the (ephemeral) blob-progress topic, plus ``extra``."""
    return [*settings.topics, f"{settings.topic_prefix}.blob-progress", *extra]


def ensure_topics(
    settings: Settings, extra: Iterable[str] = (), *, timeout: float = 30.0
) -> list[str]:
    """Create missing topics with ``settings.partitions``; existing ones are left as they are."""
    names = topic_names(settings, extra)
    admin = make_admin(settings)
    deadline = time.monotonic() + timeout
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise translate(e) from e
    missing = [n for n in names if n not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    n,
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                )
                for n in missing
            ],
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=max(1.0, deadline - time.monotonic()))
                log.info("topic.created", topic=name, partitions=settings.partitions)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing creator
                    raise translate(e) from e
    _wait_visible(admin, names, deadline)
    return names


def _wait_visible(admin, names: list[str], deadline: float) -> None:  # type: ignore[no-untyped-def]
    """Until every topic is listed with all partitions led (or the deadline passes)."""
    pending = list(names)
    while True:
        try:
            topics = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
            pending = [
                n
                for n in names
                if n not in topics
                or topics[n].error is not None
                or not topics[n].partitions
                or any(p.leader < 0 for p in topics[n].partitions.values())
            ]
        except KafkaException:
            pass
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutExpired(f"topics {pending} not visible in broker metadata in time")
        time.sleep(0.1)


def delete_topics(settings: Settings, names: Iterable[str], *, timeout: float = 10.0) -> None:
    """Best-effort delete (test teardown); missing topics are fine."""
    names = list(names)
    if not names:
        return
    for future in make_admin(settings).delete_topics(names, request_timeout=timeout).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=timeout)
