"""The project's topics exist, with the configured partitions, before anyone needs them.

* Whatever needs the broker first asks it for metadata, bounded by
  ``connect_timeout_seconds``: a command fails within seconds, naming the broker and what
  to do (librdkafka alone retries until the 60 s produce timeout); a long-running process
  waits and says what it waits for (:func:`await_topics`).
* Missing topics are created with ``settings.partitions``, never left to the broker's
  auto-creation (its default partition count). An existing topic with another count is
  reported by name and left alone: adding partitions moves keys to other partitions,
  which breaks per-object order.
* Creating waits until the broker's metadata shows every partition led: a create request
  can return before, and a producer that races it gets UNKNOWN_TOPIC_OR_PART.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from blobledger.infra.kafka import make_admin, translate
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError, StackError, TimeoutExpired

log = structlog.get_logger(__name__)

#: librdkafka's words for "no broker answered" (as opposed to one that answered "no")
_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
    }
)


@runtime_checkable
class MetadataSource(Protocol):
    """A librdkafka client (producer, consumer, admin): each can ask for metadata."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata: ...


@dataclass(frozen=True, slots=True)
class TopicState:
    """A project topic as the broker's metadata shows it."""

    name: str
    #: None: the broker has no such topic
    partitions: int | None
    #: ``settings.partitions``
    expected: int

    @property
    def exists(self) -> bool:
        return self.partitions is not None

    @property
    def mismatched(self) -> bool:
        return self.partitions is not None and self.partitions != self.expected

    def warning(self) -> str:
        """What to tell an operator about a mismatched topic (and what to do)."""
        return (
            f"topic {self.name} has {self.partitions} partitions; "
            f"BLOBLEDGER_PARTITIONS={self.expected}: set BLOBLEDGER_PARTITIONS={self.partitions} "
            "to match (blobledger never repartitions a topic: that moves keys between "
            "partitions and breaks per-object order)"
        )


def topic_names(settings: Settings, extra: Iterable[str] = ()) -> list[str]:
    """events, blob-commands, dlq and the (ephemeral) blob-progress topic, plus ``extra``."""
    return [*settings.topics, settings.progress_topic, *extra]


def broker_unreachable(settings: Settings, waited: float) -> StackError:
    """The one line a command prints when the broker does not answer."""
    hint = (
        "start it with `blobledger stack up` or set BLOBLEDGER_KAFKA_BOOTSTRAP"
        if settings.embedded_kafka
        else "check that it runs and that BLOBLEDGER_KAFKA_BOOTSTRAP (and "
        "BLOBLEDGER_KAFKA_CONFIG) point at it"
    )
    return StackError(
        f"broker at {settings.bootstrap_servers} is unreachable (after {waited:g} s); {hint}",
        service="kafka",
    )


def cluster_metadata(
    settings: Settings, client: MetadataSource | None = None, *, timeout: float | None = None
) -> ClusterMetadata:
    """Every topic the broker knows, in one metadata request through ``client`` (a producer
    about to publish reuses its connection; default: a new admin client). A broker that
    does not answer within ``timeout`` (default ``connect_timeout_seconds``) raises
    :func:`broker_unreachable`: that one line says it all, so the one-off client logs
    nothing (librdkafka would log every failed connect)."""
    timeout = settings.connect_timeout_seconds if timeout is None else timeout
    try:
        return (client or make_admin(settings, log_level=0)).list_topics(timeout=timeout)
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if isinstance(err, KafkaError) and err.code() in _UNREACHABLE:
            raise broker_unreachable(settings, timeout) from e
        raise translate(e) from e


def require_broker(settings: Settings) -> None:
    """For a command about to use the broker: fail now, in one line, if it does not answer."""
    cluster_metadata(settings)


def topic_states(
    settings: Settings, metadata: ClusterMetadata, extra: Iterable[str] = ()
) -> list[TopicState]:
    return [
        TopicState(name, _partitions(metadata, name), settings.partitions)
        for name in topic_names(settings, extra)
    ]


def _partitions(metadata: ClusterMetadata, name: str) -> int | None:
    topic = metadata.topics.get(name)
    return len(topic.partitions) if topic is not None and topic.partitions else None


def ensure_topics(
    settings: Settings, extra: Iterable[str] = (), *, timeout: float = 30.0
) -> list[str]:
    """Create missing topics with ``settings.partitions``; existing ones are left as they
    are, and a partition count other than the setting is logged as a warning."""
    return [s.name for s in _ensure(settings, make_admin(settings), list(extra), timeout)]


def _ensure(
    settings: Settings, admin: AdminClient, extra: list[str], timeout: float
) -> list[TopicState]:
    deadline = time.monotonic() + timeout
    states = topic_states(settings, cluster_metadata(settings, admin), extra)
    missing = [s.name for s in states if not s.exists]
    if missing:
        _create(settings, admin, missing, deadline)
        states = topic_states(settings, _wait_visible(admin, missing, deadline), extra)
    for s in states:
        if s.mismatched:
            log.warning(s.warning(), topic=s.name, partitions=s.partitions, expected=s.expected)
    return states


def _create(settings: Settings, admin: AdminClient, names: list[str], deadline: float) -> None:
    futures = admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
            )
            for n in names
        ],
        request_timeout=max(1.0, deadline - time.monotonic()),
    )
    for name, future in futures.items():
        try:
            future.result(timeout=max(1.0, deadline - time.monotonic()))
            log.info("topic.created", topic=name, partitions=settings.partitions)
        except KafkaException as e:
            if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:  # a racing creator
                continue
            failed = translate(e)
            raise type(failed)(
                f"could not create topic {name} ({failed}); create it with "
                f"{settings.partitions} partitions, or let this client create topics"
            ) from e


def _wait_visible(admin: AdminClient, names: list[str], deadline: float) -> ClusterMetadata:
    """Until every topic is listed with all partitions led (or the deadline passes)."""
    pending = list(names)
    while True:
        with contextlib.suppress(KafkaException):
            metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
            topics = metadata.topics
            pending = [
                n
                for n in names
                if n not in topics
                or topics[n].error is not None
                or not topics[n].partitions
                or any(p.leader < 0 for p in topics[n].partitions.values())
            ]
            if not pending:
                return metadata
        if time.monotonic() >= deadline:
            raise TimeoutExpired(f"topics {pending} not visible in broker metadata in time")
        time.sleep(0.1)


def await_topics(
    settings: Settings,
    extra: Iterable[str] = (),
    *,
    stop: threading.Event | None = None,
    max_backoff: float = 15.0,
) -> list[TopicState]:
    """For a long-running process before it consumes: block until the broker answers and
    the project's topics exist, creating missing ones. Started before the stack, or where
    it may not create topics itself (an operator will), the process waits rather than
    exits; every failed attempt logs what it waits for, and the pause doubles up to
    ``max_backoff``. Returns the topics' states (a mismatched partition count is logged),
    or ``[]`` when ``stop`` was set meanwhile."""
    extra = list(extra)
    stop = stop or threading.Event()
    admin = make_admin(settings)
    delay = 1.0
    while True:
        try:
            metadata = cluster_metadata(settings, admin)
        except BlobledgerError as e:
            log.warning(
                "waiting for the Kafka broker",
                broker=settings.bootstrap_servers,
                retry_in=delay,
                error=str(e),
            )
        else:
            missing = [s.name for s in topic_states(settings, metadata, extra) if not s.exists]
            try:
                return _ensure(settings, admin, extra, timeout=settings.wait_timeout_seconds)
            except BlobledgerError as e:
                log.warning("waiting for topics", topics=missing, retry_in=delay, error=str(e))
        if stop.wait(delay):
            return []
        delay = min(delay * 2, max_backoff)


def delete_topics(settings: Settings, names: Iterable[str], *, timeout: float = 10.0) -> None:
    """Best-effort delete (test teardown); missing topics are fine."""
    names = list(names)
    if not names:
        return
    for future in make_admin(settings).delete_topics(names, request_timeout=timeout).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=timeout)
