"""Publish events with an idempotent producer and hand back where they landed.

A background thread serves librdkafka's delivery callbacks, so many publishes can be in
flight at once (``publish_async``) and a synchronous ``publish`` costs one broker ack.
The first publish to a topic in a process asks the broker for metadata first
(:mod:`infra.topics`): a broker that does not answer fails it within
``connect_timeout_seconds``, and a missing topic is created with the configured
partitions (the producer never lets the broker auto-create one with its defaults).
Every record carries the ``traceparent`` of the span current where it is published (a
client's command span, a worker's transfer span): whoever consumes it continues that trace.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from confluent_kafka import KafkaError, Message

from blobledger.infra.kafka import headers_for, make_producer, position_of, translate
from blobledger.infra.settings import Settings
from blobledger.infra.tracing import current_traceparent
from blobledger.infra.topics import MetadataSource, cluster_metadata, ensure_topics, topic_names
from blobledger.schemas.auth import Key
from blobledger.schemas.codec import Codec, default_codec
from blobledger.schemas.errors import PermanentError, TimeoutExpired, TransientError
from blobledger.schemas.events import Event
from blobledger.schemas.ports import LogProducer
from blobledger.schemas.receipts import Receipt

#: (bootstrap servers, topic) pairs this process has seen in a broker's metadata
_known_topics: set[tuple[str, str]] = set()
_known_lock = threading.Lock()


class Publisher:
    def __init__(
        self,
        settings: Settings,
        *,
        producer: LogProducer | None = None,
        codec: Codec | None = None,
        signer: Key | None = None,
    ) -> None:
        """``signer``: the key every published event is authenticated with (without one the
        projector and the workers reject what this publishes as ``unauthenticated``)."""
        self.settings = settings
        self.codec = codec or default_codec()
        self.signer = signer
        self._producer = producer
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def producer(self) -> LogProducer:
        """The producer (made on first use, with the thread that polls it): a client that
        never publishes never connects, nor logs librdkafka's complaints while the broker
        is down."""
        producer, poller = self._producer, self._poller
        if producer is not None and poller is not None:
            return producer
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.settings)
            if self._poller is None:
                self._poller = threading.Thread(
                    target=self._poll, args=(self._producer,), name="publisher-poll", daemon=True
                )
                self._poller.start()
            return self._producer

    def _poll(self, producer: LogProducer) -> None:
        while not self._stop.is_set():
            producer.poll(0.05)

    def ensure_topic(self, topic: str) -> None:
        """Once per process and topic: one metadata request, bounded by
        ``connect_timeout_seconds``; missing project topics (and ``topic``) are created with
        the configured partitions. The request goes through the producer when it is made
        already, else through a one-off quiet client, so a broker that is down costs one
        clear error and no librdkafka lines. An in-memory twin has no metadata to ask."""
        servers = self.settings.bootstrap_servers
        if (servers, topic) in _known_topics:
            return
        producer = self._producer
        if producer is not None and not isinstance(producer, MetadataSource):
            return
        with _known_lock:
            if (servers, topic) in _known_topics:
                return
            names = topic_names(self.settings)
            extra = [] if topic in names else [topic]
            listed = cluster_metadata(self.settings, producer).topics
            if any(n not in listed for n in [*names, *extra]):
                ensure_topics(self.settings, extra)
            _known_topics.update((servers, n) for n in [*names, *extra])

    def publish_async(
        self, topic: str, event: Event, *, traceparent: str | None = None
    ) -> Future[Receipt]:
        """``traceparent``: the trace the record continues (default: the current span's)."""
        self.ensure_topic(topic)
        if traceparent is None:
            traceparent = current_traceparent()
        future: Future[Receipt] = Future()
        value = self.codec.encode(event)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                future.set_exception(translate(err))
                return
            try:
                pos = position_of(msg)
            except PermanentError as e:  # raised here it would end the poll thread
                future.set_exception(e)
                return
            future.set_result(
                Receipt(event.event_id, event.object_id, pos.topic, pos.partition, pos.offset)
            )

        try:
            self.producer.produce(
                topic,
                key=event.object_id.encode(),
                value=value,
                headers=headers_for(event, traceparent, value=value, signer=self.signer),
                on_delivery=delivered,
            )
        except BufferError as e:
            raise TransientError("producer queue is full; slow down or retry") from e
        except Exception as e:  # KafkaException from produce()
            raise translate(e) from e
        return future

    def publish(self, topic: str, event: Event, *, timeout: float | None = None) -> Receipt:
        future = self.publish_async(topic, event)
        try:
            return future.result(timeout or self.settings.wait_timeout_seconds)
        except TimeoutError as e:
            raise TimeoutExpired(
                f"broker did not acknowledge event {event.event_id} in time; "
                "check `blobledger stack status` (the send may still succeed)"
            ) from e

    def close(self) -> None:
        with self._lock:
            producer, poller = self._producer, self._poller
        if producer is None or poller is None:  # never used: nothing to flush
            return
        producer.flush(self.settings.wait_timeout_seconds)
        self._stop.set()
        poller.join(timeout=2)
