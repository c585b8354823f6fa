"""Ports: the interfaces the domain packages need from the outside world.

Each is a :class:`typing.Protocol` with two implementations held to one contract test
suite: the real adapter (librdkafka, psycopg, boto3) and an in-memory twin
(:mod:`blobledger.infra.memory`) for unit tests. The log ports mirror the subset of
confluent-kafka's ``Producer``/``Consumer`` API the runners use, so the real driver objects
satisfy them as they are and the runners keep the driver's exact semantics (assignment
callbacks, seek, pause) without a wrapper on the hot path.

Pure module: typing only, no driver imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Literal, Protocol

from blobledger.schemas.events import Event
from blobledger.schemas.receipts import EventOutcome, Receipt
from blobledger.schemas.views import AuditEntry, HistoryEntry, ObjectView, Page, UploadView

#: the header shapes the driver's ``produce`` accepts (confluent_kafka's ``HeadersType``)
Headers = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]]


# --- the log -----------------------------------------------------------------------------------
class TopicPartitionLike(Protocol):
    """A (topic, partition, offset) triple, as confluent's ``TopicPartition``."""

    topic: str
    partition: int
    offset: int


class LogError(Protocol):
    def code(self) -> int: ...

    def str(self) -> str: ...


class LogMessage(Protocol):
    """One record as a consumer sees it (confluent's ``Message`` API)."""

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def headers(self) -> list[tuple[str, bytes]] | None: ...

    def error(self) -> Any: ...


DeliveryCallback = Callable[[Any, Any], None]
RebalanceCallback = Callable[[Any, list[Any]], None]


class LogProducer(Protocol):
    """Appends records to topics; acknowledgements arrive through ``on_delivery``."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class LogConsumer(Protocol):
    """Reads topics as a member of a consumer group."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback = ...,
        on_revoke: RebalanceCallback = ...,
        on_lost: RebalanceCallback = ...,
    ) -> None: ...

    def assign(self, partitions: list[Any]) -> None: ...

    def unassign(self) -> None: ...

    def assignment(self) -> list[Any]: ...

    def poll(self, timeout: float = ...) -> Any: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...

    def seek(self, partition: Any) -> None: ...

    def get_watermark_offsets(
        self, partition: Any, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int]:
        """(low, high) offsets of a partition; ``cached``: as the last fetch reported them."""
        ...

    def pause(self, partitions: list[Any]) -> None: ...

    def resume(self, partitions: list[Any]) -> None: ...

    def commit(self, *, offsets: list[Any], asynchronous: Literal[False]) -> list[Any]:
        """Store ``offsets`` (the next offset to read, per partition) for the group, now."""
        ...

    def close(self) -> None: ...


class EventPublisher(Protocol):
    """Encodes and appends events; a receipt says where each landed."""

    def publish(self, topic: str, event: Event, *, timeout: float | None = None) -> Receipt: ...

    def publish_async(
        self, topic: str, event: Event, *, traceparent: str | None = None
    ) -> Future[Receipt]: ...

    def close(self) -> None: ...


# --- the read model, as the client sees it -------------------------------------------------------
class OutcomeSource(Protocol):
    """Read-your-writes: blocks until the projection has folded a receipt."""

    def wait(self, receipt: Receipt, timeout: float | None = None) -> EventOutcome: ...

    def close(self) -> None: ...


class ObjectQueries(Protocol):
    """Queries over the read model for one tenant, filtered by what ``actor`` may read."""

    def get(self, object_id: str, *, actor: str, include_deleted: bool = False) -> ObjectView: ...

    def acl_of(self, object_id: str) -> tuple[dict[str, list[str]], int, bool] | None: ...

    def as_of(
        self,
        object_id: str,
        *,
        actor: str,
        version: int | None = None,
        at: datetime | None = None,
    ) -> HistoryEntry: ...

    def history(
        self, object_id: str, *, actor: str, after_version: int = 0, limit: int = 1000
    ) -> list[HistoryEntry]: ...

    def list_objects(
        self,
        *,
        actor: str,
        prefix: str = "",
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page: ...

    def audit(
        self, subject: str, *, actor: str, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """What ``subject`` did; to anyone but ``subject`` and ``system:`` actors, only
        the events on objects ``actor`` administers."""
        ...

    def upload(self, upload_id: str, *, actor: str) -> UploadView:
        """NotFoundError, as for an unknown id, unless ``actor`` may read its object."""
        ...

    def close(self) -> None: ...


# --- the blob store -------------------------------------------------------------------------------
class BlobStore(Protocol):
    """The S3 operations blobledger uses (boto3's client API, keyword arguments as S3 names
    them), so a boto3 client is an implementation as it is."""

    def head_object(self, *, Bucket: str, Key: str, **kw: Any) -> Mapping[str, Any]: ...

    def put_object(self, *, Bucket: str, Key: str, **kw: Any) -> Mapping[str, Any]: ...

    def copy_object(
        self, *, Bucket: str, Key: str, CopySource: Mapping[str, str], **kw: Any
    ) -> Mapping[str, Any]: ...

    def delete_object(self, *, Bucket: str, Key: str, **kw: Any) -> Mapping[str, Any]: ...

    def get_object(self, *, Bucket: str, Key: str, **kw: Any) -> Mapping[str, Any]: ...

    def create_multipart_upload(self, *, Bucket: str, Key: str, **kw: Any) -> Mapping[str, Any]: ...

    def upload_part(self, **kw: Any) -> Mapping[str, Any]: ...

    def list_parts(self, **kw: Any) -> Mapping[str, Any]: ...

    def list_multipart_uploads(self, **kw: Any) -> Mapping[str, Any]: ...

    def complete_multipart_upload(self, **kw: Any) -> Mapping[str, Any]: ...

    def abort_multipart_upload(
        self, *, Bucket: str, Key: str, UploadId: str, **kw: Any
    ) -> Mapping[str, Any]: ...

    def generate_presigned_url(
        self, ClientMethod: str, Params: Mapping[str, Any] | None = ..., ExpiresIn: int = ...
    ) -> str: ...

    def get_paginator(self, operation_name: str) -> Any: ...


BlobStoreFactory = Callable[[], BlobStore]

__all__ = [
    "BlobStore",
    "BlobStoreFactory",
    "EventPublisher",
    "Headers",
    "LogConsumer",
    "LogError",
    "LogMessage",
    "LogProducer",
    "ObjectQueries",
    "OutcomeSource",
    "TopicPartitionLike",
]
