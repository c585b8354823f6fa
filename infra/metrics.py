"""Every Prometheus metric of blobledger, defined once, and the endpoints that serve them.

Names follow Prometheus conventions: a ``blobledger_`` prefix, base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters. Every label takes values from a small
closed set (the ``*_code`` functions map free text onto it), so a bad input can never
grow the number of series.

The ``record_*`` / ``observe_*`` functions are what instrumented code calls; they take
whole batches where the caller has them, because one observation costs a few
microseconds and the projector folds tens of thousands of events a second.

One process, one endpoint: :func:`serve_metrics` serves the process's metrics on
``Settings.metrics_port`` (plus an offset its supervisor gives it; 0 = none).

Many processes, one endpoint (``blobledger up``): the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (:func:`prepare_multiprocess_dir`,
:func:`multiprocess_env`) in each child's environment before the child starts: it must
be set before ``prometheus_client`` is first imported, because the library picks its
value storage then. Each child then writes its values to files there, serves nothing
itself, and the supervisor serves the sum of all of them with :func:`serve_aggregate`,
calling :func:`process_exited` when a child ends so its live gauges drop out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError, ConfigurationError
from blobledger.schemas.events import COMPENSATION_REASONS

#: the environment variable of prometheus-client's multiprocess mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: the port the shipped Prometheus config scrapes (infra/observability/prometheus.yml):
#: run ``BLOBLEDGER_METRICS_PORT=19464 blobledger up`` to match it
SCRAPE_PORT = 19464

#: command -> visible: 5 ms (a hot projector) .. 60 s (a projector catching up); the SLO
#: threshold (1 s, infra/observability/alerts.yml) must be one of them
VISIBLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: at most this many events of a batch are timed, spread evenly over it: the buckets'
#: ratios (what the SLO reads) stay unbiased at a fixed cost per batch
VISIBLE_SAMPLES_PER_BATCH = 64

# --- metadata path -------------------------------------------------------------------------
FOLD_BATCH_SECONDS = Histogram(
    "blobledger_fold_batch_duration_seconds",
    "Time to fold one batch and commit it with its checkpoint.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FOLD_BATCH_EVENTS = Histogram(
    "blobledger_fold_batch_events",
    "Events in one folded batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
EVENTS_ACCEPTED = Counter("blobledger_events_accepted_total", "Events the fold accepted.")
EVENTS_REJECTED = Counter(
    "blobledger_events_rejected_total",
    "Events the fold rejected, by reason code (rejection_code()).",
    ["reason"],
)
COMMAND_VISIBLE_SECONDS = Histogram(
    "blobledger_command_visible_seconds",
    "From the event's envelope time to its outcome being committed in the read model "
    "(a sample of each batch).",
    buckets=VISIBLE_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "blobledger_consumer_lag_records",
    "Records in a partition a consumer group has not processed yet.",
    ["group", "topic", "partition"],
    # a partition moves between processes: the newest report wins
    multiprocess_mode="livemostrecent",
)

# --- blob path ------------------------------------------------------------------------------
UPLOADS = Counter(
    "blobledger_uploads_total",
    "Uploads a worker finished, by outcome and (for failed) compensation reason.",
    ["outcome", "reason"],
)
BLOB_STORED_BYTES = Counter(
    "blobledger_blob_stored_bytes_total", "Size of the blobs uploads stored (deduplicated too)."
)
BLOB_UPLOADED_BYTES = Counter(
    "blobledger_blob_uploaded_bytes_total",
    "Bytes S3 acknowledged, part by part: rate() of it is the upload throughput.",
)
PART_RETRIES = Counter("blobledger_blob_part_retries_total", "S3 part uploads tried again.")
TRANSFERS_IN_FLIGHT = Gauge(
    "blobledger_blob_transfers_in_flight",
    "Transfers the workers are running now.",
    multiprocess_mode="livesum",
)
CIRCUIT_STATE = Gauge(
    "blobledger_circuit_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open (worst process).",
    ["dependency"],
    multiprocess_mode="livemax",
)
CIRCUIT_OPENED = Counter(
    "blobledger_circuit_opened_total", "Times a circuit breaker opened.", ["dependency"]
)
# the read model's view of pending uploads, set by whoever reads it (status, reaper)
PENDING_UPLOADS = Gauge(
    "blobledger_pending_uploads",
    "Uploads the read model holds as pending.",
    multiprocess_mode="livemostrecent",
)
OLDEST_PENDING_UPLOAD_AGE = Gauge(
    "blobledger_oldest_pending_upload_age_seconds",
    "Age of the oldest pending upload (0 when none).",
    multiprocess_mode="livemostrecent",
)
UPLOAD_DEADLINE = Gauge(
    "blobledger_upload_deadline_seconds",
    "The upload deadline setting, for alerts to compare ages with.",
    multiprocess_mode="livemostrecent",
)
REAPER_ACTIONS = Counter(
    "blobledger_reaper_actions_total", "What the reaper did, by action.", ["action"]
)

# --- the log --------------------------------------------------------------------------------
DLQ_RECORDS = Counter(
    "blobledger_dlq_records_total", "Records dead-lettered, by error code.", ["code"]
)
PROCESSES = Gauge(
    "blobledger_processes",
    "Live blobledger processes serving metrics, by service.",
    ["service"],
    multiprocess_mode="livesum",
)

#: every metric above, for tests and docs
ALL = (
    FOLD_BATCH_SECONDS,
    FOLD_BATCH_EVENTS,
    EVENTS_ACCEPTED,
    EVENTS_REJECTED,
    COMMAND_VISIBLE_SECONDS,
    CONSUMER_LAG,
    UPLOADS,
    BLOB_STORED_BYTES,
    BLOB_UPLOADED_BYTES,
    PART_RETRIES,
    TRANSFERS_IN_FLIGHT,
    CIRCUIT_STATE,
    CIRCUIT_OPENED,
    PENDING_UPLOADS,
    OLDEST_PENDING_UPLOAD_AGE,
    UPLOAD_DEADLINE,
    REAPER_ACTIONS,
    DLQ_RECORDS,
    PROCESSES,
)

# --- bounded label values -------------------------------------------------------------------
#: what ``reason`` of blobledger_events_rejected_total can be
REJECTION_CODES = (
    "exists",
    "conflict",
    "not_found",
    "deleted",
    "forbidden",
    "unauthenticated",
    "last_admin",
    "invalid",
    "too_large",
    "upload_state",
    "checksum_mismatch",
    "not_an_event",
    "other",
)
_UPLOAD_STATE = frozenset({"duplicate_upload", "unknown_upload", "upload_not_pending"})
UPLOAD_OUTCOMES = ("stored", "deduplicated", "failed", "cancelled")
REAPER_ACTION_NAMES = (
    "compensated",
    "aborted_multipart",
    "deleted_staging",
    "deleted_spool",
    "pass_failed",
)
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def rejection_code(reason: str | None) -> str:
    """The fold's rejection reason (``invalid_metadata``, ``exists``...) as one of
    :data:`REJECTION_CODES`; the full reason stays in the read model's outcomes."""
    reason = reason or "other"
    if reason in REJECTION_CODES:
        return reason
    if reason.startswith("invalid_"):
        return "invalid"
    if reason.endswith("too_large"):
        return "too_large"
    if reason in _UPLOAD_STATE:
        return "upload_state"
    return "other"


def error_code(code: str) -> str:
    """``code`` if blobledger defines it (an error class's ``code``, a compensation
    reason), else ``other``: a foreign exception's class name never becomes a label."""
    known = set(COMPENSATION_REASONS)
    pending: list[type[BlobledgerError]] = [BlobledgerError]
    while pending:
        cls = pending.pop()
        known.add(cls.code)
        pending.extend(cls.__subclasses__())
    return code if code in known else "other"


def compensation_code(reason: str | None) -> str:
    """A failed upload's reason as one of ``COMPENSATION_REASONS``, else ``other``."""
    return reason if reason in COMPENSATION_REASONS else "other"


# --- what instrumented code calls -------------------------------------------------------
def observe_fold_batch(seconds: float, events: int) -> None:
    """Projector, after a batch and its checkpoint are committed."""
    FOLD_BATCH_SECONDS.observe(seconds)
    FOLD_BATCH_EVENTS.observe(events)


def record_outcomes(accepted: int, rejected_reasons: Iterable[str | None] = ()) -> None:
    """Projector, per committed batch: how many events were accepted and each rejected
    event's reason (one counter update per distinct code, not per event)."""
    if accepted:
        EVENTS_ACCEPTED.inc(accepted)
    for code, n in Tally(rejection_code(r) for r in rejected_reasons).items():
        EVENTS_REJECTED.labels(code).inc(n)


def observe_visible(occurred_at_us: Sequence[int], *, now: float | None = None) -> None:
    """Projector, once the batch holding these events is committed (live folding only,
    not a replay): envelope time (``Envelope.occurred_at``, µs) -> visible. A clock behind
    the writer's counts as 0."""
    if not occurred_at_us:
        return
    now_us = (time.time() if now is None else now) * 1e6
    n = len(occurred_at_us)
    step = -(-n // VISIBLE_SAMPLES_PER_BATCH)  # ceil: at most that many samples
    for i in range(0, n, step):
        COMMAND_VISIBLE_SECONDS.observe(max(0.0, now_us - occurred_at_us[i]) / 1e6)


def set_consumer_lag(group: str, topic: str, partition: int, records: int) -> None:
    """Consumers, for each partition they own: log end minus their committed position."""
    CONSUMER_LAG.labels(group, topic, str(partition)).set(max(0, records))


def forget_consumer_lag(group: str, topic: str, partition: int) -> None:
    """Consumers, when a partition is taken from them: its lag is its next owner's to say."""
    with contextlib.suppress(KeyError):  # never reported
        CONSUMER_LAG.remove(group, topic, str(partition))


def record_upload(outcome: str, *, reason: str | None = None, size: int = 0) -> None:
    """Blob worker, once an upload's outcome is decided: ``outcome`` is one of
    :data:`UPLOAD_OUTCOMES`; ``reason`` the compensation reason of a failed one; ``size``
    the stored blob's size (stored or deduplicated)."""
    if outcome not in UPLOAD_OUTCOMES:
        raise ValueError(f"unknown upload outcome {outcome!r}; one of {UPLOAD_OUTCOMES}")
    UPLOADS.labels(outcome, compensation_code(reason) if outcome == "failed" else "").inc()
    if size:
        BLOB_STORED_BYTES.inc(size)


def transfer_in_flight() -> AbstractContextManager[None]:
    """Blob worker, around one transfer (``with metrics.transfer_in_flight(): ...``)."""
    return TRANSFERS_IN_FLIGHT.track_inprogress()


def record_part_uploaded(size: int) -> None:
    """Blob transfer, when S3 acknowledges a part (or a single-request upload)."""
    BLOB_UPLOADED_BYTES.inc(size)


def record_part_retry() -> None:
    """Blob transfer, before a part upload is tried again."""
    PART_RETRIES.inc()


_circuit_lock = threading.Lock()
_circuit_last: dict[str, str] = {}


def record_circuit_state(dependency: str, state: str) -> None:
    """Circuit breaker (infra/retry.py), whenever it reads or changes its state (``state``
    a ``BreakerState`` value); an opening is counted once however often it is reported."""
    if state not in CIRCUIT_STATE_VALUES:
        raise ValueError(f"unknown circuit state {state!r}")
    with _circuit_lock:
        previous = _circuit_last.get(dependency)
        _circuit_last[dependency] = state
    CIRCUIT_STATE.labels(dependency).set(CIRCUIT_STATE_VALUES[state])
    if state == "open" and previous != "open":
        CIRCUIT_OPENED.labels(dependency).inc()


def record_pending_uploads(count: int, oldest_age_seconds: float, deadline_seconds: float) -> None:
    """Whoever reads the read model's pending uploads (``status``, the reaper's pass)."""
    PENDING_UPLOADS.set(count)
    OLDEST_PENDING_UPLOAD_AGE.set(max(0.0, oldest_age_seconds))
    UPLOAD_DEADLINE.set(deadline_seconds)


def record_reaper_actions(
    *,
    compensated: int = 0,
    aborted_multipart: int = 0,
    deleted_staging: int = 0,
    deleted_spool: int = 0,
    pass_failed: int = 0,
) -> None:
    """Reaper, after each pass (its ``ReapReport``), or ``pass_failed=1``."""
    counts = {
        "compensated": compensated,
        "aborted_multipart": aborted_multipart,
        "deleted_staging": deleted_staging,
        "deleted_spool": deleted_spool,
        "pass_failed": pass_failed,
    }
    for action, n in counts.items():
        if n:
            REAPER_ACTIONS.labels(action).inc(n)


def record_dead_letter(code: str) -> None:
    """DLQ, once a letter is acknowledged (not per send attempt)."""
    DLQ_RECORDS.labels(error_code(code)).inc()


# --- serving ------------------------------------------------------------------------------
@dataclass
class MetricsServer:
    """A running endpoint (a daemon thread); ``close`` frees the port."""

    host: str
    port: int
    _httpd: WSGIServer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def multiprocess_dir() -> Path | None:
    """The multiprocess directory this process writes to (None: single-process mode)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def serve_metrics(
    settings: Settings, *, service: str, offset: int = 0, port: int | None = None
) -> MetricsServer | None:
    """Serve this process's metrics on ``port``, else ``metrics_port + offset`` (the
    supervisor gives each process its own offset). None when the port is 0, or in
    multiprocess mode, where the supervisor's aggregate endpoint serves them."""
    PROCESSES.labels(service).set(1)
    chosen = port if port is not None else settings.metrics_port and settings.metrics_port + offset
    if not chosen or multiprocess_dir() is not None:
        return None
    return _serve(settings.metrics_host, chosen, REGISTRY)


def prepare_multiprocess_dir(directory: Path) -> Path:
    """An empty ``directory`` for a supervisor's run: files of an earlier run would add
    their counts to this one's."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def multiprocess_env(directory: Path) -> dict[str, str]:
    """What a supervisor adds to each child's environment before starting it."""
    return {MULTIPROC_ENV: str(directory)}


def process_exited(pid: int, directory: Path) -> None:
    """Supervisor, when a child ended: its ``live*`` gauges stop counting."""
    multiprocess.mark_process_dead(pid, str(directory))


def serve_aggregate(
    settings: Settings, directory: Path, *, port: int | None = None
) -> MetricsServer | None:
    """Serve the sum of every process's metrics written under ``directory`` on ``port``,
    else ``metrics_port`` (None when that is 0)."""
    chosen = settings.metrics_port if port is None else port
    if not chosen:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return _serve(settings.metrics_host, chosen, registry)


def _serve(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    try:
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {e}; "
            "set BLOBLEDGER_METRICS_PORT to a free port (0: serve none)"
        ) from e
    return MetricsServer(host, port, httpd)
