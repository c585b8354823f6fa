"""The composition root: settings -> adapters -> Client, Projector, Worker, Reaper.

The one module that knows which adapter implements which port. Everything it builds
receives its collaborators through the constructor, so a test builds the same objects
over in-memory twins (:mod:`blobledger.infra.memory`) instead. Domain packages never
import this module, except their command-line entry points (listed as such in the
import contracts, ``.importlinter``).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from blobledger.infra.settings import Settings

if TYPE_CHECKING:
    import psycopg

    from blobledger.infra.metrics import MetricsServer

    from blobledger.blob_worker.hashcache import HashCache
    from blobledger.blob_worker.reaper import Reaper
    from blobledger.blob_worker.runner import Worker
    from blobledger.producers.client import Client
    from blobledger.projectors.runner import Projector


def client(settings: Settings | None = None, *, actor: str, tenant: str | None = None) -> Client:
    """A :class:`~blobledger.producers.client.Client` on the configured log, read model and
    blob store. Nothing connects until it is used: a publish opens only the producer, a
    query only the Postgres connection, a blob read only the S3 client."""
    from blobledger.infra import keys
    from blobledger.infra.postgres import connect
    from blobledger.infra.publisher import Publisher
    from blobledger.infra.s3 import make_s3_client
    from blobledger.producers.client import Client
    from blobledger.projectors.queries import Queries
    from blobledger.projectors.waiter import OutcomeWaiter

    s = settings or Settings.from_env()
    key = keys.signing_key(s)
    return Client(
        s,
        actor=actor,
        tenant=tenant,
        key=key,
        publisher=Publisher(s, signer=key),
        outcomes=OutcomeWaiter(s),
        queries=Queries(
            functools.partial(connect, s, autocommit=True),
            s.read_model_schema,
            tenant or s.tenant,
        ),
        blob_store=functools.partial(make_s3_client, s),
    )


def projector_connection(settings: Settings) -> psycopg.Connection:
    """A read-model writer's connection (commits need not wait for the WAL flush unless
    the settings say so: a lost tail is re-folded from the log)."""
    from blobledger.infra.postgres import connect

    return connect(settings, synchronous_commit=settings.projector_synchronous_commit)


def projector(
    settings: Settings,
    *,
    schema: str | None = None,
    group_id: str | None = None,
    stop: threading.Event | None = None,
) -> Projector:
    """A :class:`~blobledger.projectors.runner.Projector` on the configured broker and read
    model, with the read model's migrations applied first and the topics made (it waits,
    saying so, until the broker answers: see :func:`~blobledger.infra.topics.await_topics`;
    ``stop`` ends the wait)."""
    from blobledger.infra import keys
    from blobledger.infra.dlq import open_dead_letters
    from blobledger.infra.kafka import fetch_sizes, make_consumer
    from blobledger.infra.limits import discover
    from blobledger.infra.topics import await_topics
    from blobledger.projectors.migrate import migrate
    from blobledger.projectors.readmodel import ReadModel
    from blobledger.projectors.runner import Projector

    schema = schema or settings.read_model_schema
    with projector_connection(settings) as conn:
        migrate(conn, schema)
    await_topics(settings, stop=stop)

    def open_model() -> ReadModel:
        return ReadModel(projector_connection(settings), schema, memo=True)

    limits = discover(settings)  # every record the broker took must come through whole
    group = group_id or settings.projector_group
    return Projector(
        settings,
        consumer=make_consumer(
            settings,
            group,
            **fetch_sizes(limits.fetch(settings.events_topic)),
            # eager rebalancing: on_assign gets the whole assignment, which we re-seek
            **{"partition.assignment.strategy": "roundrobin"},
        ),
        open_model=open_model,
        dead_letters=open_dead_letters(settings, limits),
        keyring=keys.keyring(settings),
        group=group,
    )


def worker(
    settings: Settings,
    *,
    hash_cache: HashCache | None = None,
    local_files: str = "hash_first",
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> Worker:
    """A blob :class:`~blobledger.blob_worker.runner.Worker` on the configured broker and S3.
    ``local_files``: see ``TransferOptions.local_files`` (hash_first keeps "a stored hash
    costs 0 bytes" for every path; stream is one pass, P3). Like :func:`projector`, it
    first waits for the broker and the topics (``stop`` ends the wait)."""
    from blobledger.blob_worker.hashcache import HashCache
    from blobledger.blob_worker.promotion import promoter_for
    from blobledger.blob_worker.runner import Worker
    from blobledger.blob_worker.transfer import Transfer, TransferOptions
    from blobledger.infra.kafka import fetch_sizes, make_consumer, make_producer
    from blobledger.infra import keys
    from blobledger.infra.dlq import open_dead_letters
    from blobledger.infra.limits import discover
    from blobledger.infra.publisher import Publisher
    from blobledger.infra.retry import CircuitBreaker
    from blobledger.infra.s3 import make_s3_client
    from blobledger.infra.topics import await_topics

    await_topics(settings, stop=stop)
    s3 = make_s3_client(settings)
    transfer = Transfer(
        s3,
        TransferOptions.from_settings(settings, local_files=local_files),
        breaker=CircuitBreaker("s3", failure_threshold=5, reset_timeout=5.0),
        hash_cache=hash_cache
        if hash_cache is not None
        else HashCache(settings.data_dir / "worker-hash-cache.sqlite"),
    )
    transfer.promoter = promoter_for(settings, transfer)
    limits = discover(settings)  # every command the broker took must come through whole
    consumer = make_consumer(
        settings,
        settings.worker_group,
        **fetch_sizes(limits.fetch(settings.commands_topic)),
        # we poll while a transfer runs, but a slow broker ack must not evict us
        **{"max.poll.interval.ms": 600000},
    )
    # it dead-letters bad commands too (infra/dlq.py: too large ones as references)
    producer = make_producer(
        settings,
        max_record_bytes=max(
            limits.of(t).max_bytes for t in (settings.events_topic, settings.dlq_topic)
        ),
    )
    return Worker(
        settings,
        consumer=consumer,
        publisher=Publisher(
            settings, producer=producer, signer=keys.signing_key(settings, "blob-worker")
        ),
        transfer=transfer,
        keyring=keys.keyring(settings),
        # with the DLQ's index, like the projector's: a worker restarted after a letter was
        # acknowledged but before the command's offset was committed does not send it again
        dead_letters=open_dead_letters(settings, limits, producer=producer),
        **kwargs,
    )


def reaper(settings: Settings, *, wait: bool = True, stop: threading.Event | None = None) -> Reaper:
    """A :class:`~blobledger.blob_worker.reaper.Reaper` on the configured read model (an
    autocommit connection per pass), S3 and broker, once the topics exist: ``wait`` for the
    broker like :func:`projector`, or (a single pass) fail at once when it does not answer."""
    from blobledger.blob_worker.reaper import Reaper
    from blobledger.infra import keys
    from blobledger.infra.postgres import connect
    from blobledger.infra.publisher import Publisher
    from blobledger.infra.s3 import make_s3_client
    from blobledger.infra.topics import await_topics, ensure_topics

    if wait:
        await_topics(settings, stop=stop)
    else:
        ensure_topics(settings)
    return Reaper(
        settings,
        connect=functools.partial(connect, settings, autocommit=True),
        s3=make_s3_client(settings),
        publisher=Publisher(settings, signer=keys.signing_key(settings, "reaper")),
    )


#: each long-running service's metrics port is ``metrics_port`` + this, so a projector, a
#: worker and a reaper started by hand on one host do not take the same port
METRICS_PORT_OFFSETS = {"projector": 0, "worker": 1, "reaper": 2}


def observe(settings: Settings, service: str) -> MetricsServer | None:
    """What a long-running process (``service``: a key of :data:`METRICS_PORT_OFFSETS`)
    sets up first: its name on every log line, traces exported when an OTLP endpoint is
    configured, and its metrics endpoint when ``metrics_port`` is set (None otherwise, and
    under ``blobledger up``, whose supervisor serves every process's metrics)."""
    from blobledger.infra import logging as blog
    from blobledger.infra import metrics, tracing

    blog.set_service(service)
    tracing.setup_tracing(settings, f"blobledger-{service}")
    return metrics.serve_metrics(
        settings, service=service, offset=METRICS_PORT_OFFSETS.get(service, 0)
    )


__all__ = ["client", "observe", "projector", "projector_connection", "reaper", "worker"]
