"""Publish events with an idempotent producer and hand back where they landed.

A background thread serves librdkafka's delivery callbacks, so many publishes can be in
flight at once (``publish_async``) and a synchronous ``publish`` costs one broker ack.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from confluent_kafka import KafkaError, Message

from blobledger.infra.kafka import headers_for, make_producer, position_of, translate
from blobledger.infra.settings import Settings
from blobledger.schemas.auth import Key
from blobledger.schemas.codec import Codec, default_codec
from blobledger.schemas.errors import PermanentError, TimeoutExpired, TransientError
from blobledger.schemas.events import Event
from blobledger.schemas.ports import LogProducer
from blobledger.schemas.receipts import Receipt


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
        self.producer = producer or make_producer(settings)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="publisher-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def publish_async(
        self, topic: str, event: Event, *, traceparent: str | None = None
    ) -> Future[Receipt]:
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
        self.producer.flush(self.settings.wait_timeout_seconds)
        self._stop.set()
        self._poller.join(timeout=2)
