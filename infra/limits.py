"""How large a record each of the project's topics holds, asked of the broker.

The DLQ producer is sized to the DLQ topic (a dead letter that does not fit is kept as a
reference, infra/dlq.py) and consumers to the topics they read, so a record the broker
accepted can always be fetched: librdkafka drops a fetch response larger than its
``receive.message.max.bytes`` and fetches it again, forever, which stops the consumer.

Where a limit comes from, in order: the topic's ``max.message.bytes``, the broker's
``message.max.bytes``, else ``Settings.kafka_max_message_bytes``. Tansu 0.6 answers
DescribeConfigs with no entries (for a topic created without configs, and for the
broker), and enforces no limit at all (measured: 60 MB records, and 3 MB into a topic
created with ``max.message.bytes=2000000``, were accepted and fetched back), so there every
limit is assumed and consumers must be ready for records of any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from blobledger.infra import logging as blog
from blobledger.infra.kafka import make_admin
from blobledger.infra.settings import Settings

log = blog.get_logger(__name__)


class Source(StrEnum):
    """Who said how large a topic's records may be."""

    TOPIC = "topic"  # the topic's max.message.bytes
    BROKER = "broker"  # the broker's message.max.bytes (the topic said nothing)
    ASSUMED = "assumed"  # nobody: Settings.kafka_max_message_bytes


@dataclass(frozen=True, slots=True)
class TopicLimit:
    topic: str
    #: the largest record batch the topic takes, in bytes
    max_bytes: int
    source: Source

    @property
    def enforced(self) -> bool:
        """The broker stated it, so it refuses bigger records (an assumed limit binds only
        our producers: the broker may hold bigger records than that)."""
        return self.source is not Source.ASSUMED


@dataclass(frozen=True, slots=True)
class FetchLimit:
    """What a consumer of some topics must be able to fetch (``make_consumer(fetch=...)``)."""

    #: the largest record the topics hold, as far as anyone said
    record_bytes: int
    #: False when some topic's limit was assumed: its records may be of any size
    bounded: bool


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The limits of the project's topics (picklable: replay workers receive it)."""

    topics: Mapping[str, TopicLimit]
    #: for a topic not asked about
    assumed_bytes: int

    def of(self, topic: str) -> TopicLimit:
        found = self.topics.get(topic)
        return found if found is not None else TopicLimit(topic, self.assumed_bytes, Source.ASSUMED)

    def fetch(self, *topics: str) -> FetchLimit:
        limits = [self.of(t) for t in topics]
        return FetchLimit(max(lim.max_bytes for lim in limits), all(lim.enforced for lim in limits))

    @classmethod
    def assumed(cls, settings: Settings) -> RecordLimits:
        """Every topic at the assumed limit (no broker asked)."""
        return cls({}, settings.kafka_max_message_bytes)


def discover(
    settings: Settings,
    topics: Iterable[str] | None = None,
    *,
    admin: AdminClient | None = None,
    timeout: float = 10.0,
) -> RecordLimits:
    """Ask the broker for the limits of ``topics`` (default: events, commands, DLQ). A
    broker that cannot answer (down, no DescribeConfigs permission) leaves them assumed:
    the DLQ then keeps big records as references, which is always safe."""
    names = list(topics) if topics is not None else list(settings.topics)
    admin = admin or make_admin(settings)
    found: dict[str, TopicLimit] = {}
    try:
        topic_values = _describe(
            admin, [ConfigResource(ResourceType.TOPIC, t) for t in names], timeout
        )
        broker_value: int | None = None
        if any("max.message.bytes" not in topic_values.get(t, {}) for t in names):
            brokers = admin.list_topics(timeout=timeout).brokers
            if brokers:
                broker = ConfigResource(ResourceType.BROKER, str(min(brokers)))
                values = _describe(admin, [broker], timeout).get(broker.name, {})
                broker_value = _positive(values.get("message.max.bytes"))
        for t in names:
            value = _positive(topic_values.get(t, {}).get("max.message.bytes"))
            if value is not None:
                found[t] = TopicLimit(t, value, Source.TOPIC)
            elif broker_value is not None:
                found[t] = TopicLimit(t, broker_value, Source.BROKER)
    except (KafkaException, TimeoutError) as e:
        log.warning("record size limits not reported; assuming", error=str(e))
    limits = RecordLimits(found, settings.kafka_max_message_bytes)
    log.info(
        "record size limits",
        **{t: f"{limits.of(t).max_bytes} ({limits.of(t).source})" for t in names},
    )
    return limits


def _describe(
    admin: AdminClient, resources: list[ConfigResource], timeout: float
) -> dict[str, dict[str, str | None]]:
    """Resource name -> config name -> value; a resource the broker refused is left out."""
    out: dict[str, dict[str, str | None]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException as e:  # e.g. the topic is missing: the caller assumes
            log.info("describe_configs refused", resource=resource.name, error=str(e))
            continue
        out[resource.name] = {name: entry.value for name, entry in entries.items()}
    return out


def _positive(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None


__all__ = ["FetchLimit", "RecordLimits", "Source", "TopicLimit", "discover"]
