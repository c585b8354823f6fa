"""``blobledger status``: one report of the whole system, and a verdict on it.

The report is plain data (:class:`StatusReport`) gathered by :func:`gather` from probes
that each answer within a second or two, run side by side: the services (as ``stack
status`` probes them, external endpoints included), the supervisor's state file, the
consumer groups (members, per-partition lag, age of the oldest unprocessed record), the
dead-letter topic, and the read model (checkpoints, uploads, recent throughput).
:func:`classify` turns a report into healthy / degraded / down with the reasons, on plain
data, so the policy is tested without services. The CLI is ``infra/status_cli.py``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from blobledger.infra import supervisor_state
from blobledger.infra.kafka import make_admin
from blobledger.infra.liveness import (
    NONE,
    PROJECTOR,
    WORKER,
    Role,
    describe_group,
    judge,
    supervised,
)
from blobledger.infra.logprobe import PartitionHead, probe_topic
from blobledger.infra.readmodel_stats import ReadModelStats, read_model_stats
from blobledger.infra.settings import Settings
from blobledger.infra.stack.base import Service
from blobledger.infra.stack.launcher import ORDER, Stack
from blobledger.infra.supervisor_state import RUNNING, SupervisorState
from blobledger.schemas.errors import TransientError

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
#: a backlog whose oldest record waited longer than this is not being worked off: the
#: consumers are missing, stuck or too few (a folding projector keeps it under a second)
LAG_AGE_DEGRADED_SECONDS = 60.0
#: what one probe may take; they run side by side, so ``status`` answers in about this
PROBE_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    endpoint: str
    healthy: bool
    embedded: bool
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class ProcessInfo:
    """A child of ``blobledger up``'s supervisor."""

    name: str
    role: str
    state: str
    pid: int | None
    restarts: int
    failures: int
    last_exit: int | None
    log: str
    #: seconds since it started (running) or until its restart (backoff)
    seconds: float


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    end: int
    #: the next offset the group will process (checkpoint or committed offset)
    position: int
    #: seconds the first unprocessed record has waited (None: none waits)
    oldest_age: float | None

    @property
    def lag(self) -> int:
        return max(0, self.end - self.position)


@dataclass(frozen=True)
class GroupStatus:
    role: str
    group: str
    topic: str
    #: liveness verdict: consuming, joining, restarting, none, unknown
    verdict: str
    detail: str
    members: int | None
    #: pids of the supervised processes of this role that run
    supervised: tuple[int, ...] = ()
    #: empty when the lag could not be read
    partitions: tuple[PartitionLag, ...] = ()
    #: records the group may hold in flight without being behind (a worker's transfers)
    in_flight: int = 0

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def oldest_age(self) -> float | None:
        ages = [p.oldest_age for p in self.partitions if p.oldest_age is not None and p.lag]
        return max(ages) if ages else None


@dataclass(frozen=True)
class DeadLetters:
    topic: str
    count: int
    oldest_age: float | None


@dataclass(frozen=True)
class StatusReport:
    data_dir: str
    taken_at: float
    services: tuple[ServiceHealth, ...]
    supervisor_pid: int | None = None
    supervisor_log: str | None = None
    processes: tuple[ProcessInfo, ...] = ()
    groups: tuple[GroupStatus, ...] = ()
    dead_letters: DeadLetters | None = None
    read_model: ReadModelStats | None = None
    #: what could not be read although its service answered
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        for g, raw in zip(self.groups, body["groups"], strict=True):
            raw["lag"], raw["oldest_age"] = g.lag, g.oldest_age
            for p, praw in zip(g.partitions, raw["partitions"], strict=True):
                praw["lag"] = p.lag
        return body


@dataclass(frozen=True)
class Verdict:
    state: str
    reasons: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]


# --- the policy (pure) -----------------------------------------------------------------------
def classify(report: StatusReport) -> Verdict:
    """Down: a service does not answer. Degraded: it answers, but work is not getting done
    or needs a person (no consumer, a crash loop, an ageing backlog, dead letters, uploads
    past their deadline, something unreadable). Healthy otherwise."""
    down = [f"{s.name} does not answer at {s.endpoint}" for s in report.services if not s.healthy]
    if down:
        return Verdict(DOWN, tuple(down))
    reasons: list[str] = list(report.errors)
    for g in report.groups:
        if g.verdict == NONE:
            reasons.append(g.detail)
        age = g.oldest_age
        if g.lag > g.in_flight and age is not None and age > LAG_AGE_DEGRADED_SECONDS:
            reasons.append(
                f"{g.role} group {g.group} is {g.lag} behind on {g.topic}; the oldest "
                f"unprocessed record waited {age:.0f} s"
            )
    for p in report.processes:
        if p.state != RUNNING:
            reasons.append(
                f"{p.name} is not running ({p.state}: exited {p.failures} time(s) in a row, "
                f"last status {p.last_exit}); see {p.log}"
            )
    if report.dead_letters is not None and report.dead_letters.count:
        reasons.append(
            f"{report.dead_letters.count} dead letter(s) in {report.dead_letters.topic} "
            "(`blobledger dlq list`)"
        )
    rm = report.read_model
    if rm is not None and rm.past_deadline:
        reasons.append(
            f"{rm.past_deadline} pending upload(s) past their deadline (is a reaper running?)"
        )
    return Verdict(DEGRADED if reasons else HEALTHY, tuple(reasons))


# --- gathering -----------------------------------------------------------------------------
def gather(settings: Settings, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> StatusReport:
    """Run every probe side by side; each is bounded by ``timeout``."""
    supervisor = supervisor_state.read_state(settings)
    if supervisor is not None and not supervisor.fresh():
        supervisor = None  # a dead supervisor's last words
    stack = Stack(settings)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="status") as pool:
        services = [pool.submit(_service, svc, timeout) for svc in _services(stack)]
        model = pool.submit(read_model_stats, settings, connect_timeout=timeout)
        projector = pool.submit(_projector_group, settings, supervisor, model, timeout)
        worker = pool.submit(_worker_group, settings, supervisor, timeout)
        dlq = pool.submit(_dead_letters, settings, timeout)
        health = tuple(f.result() for f in services)
        results = _Results({s.name for s in health if s.healthy})
        rm = results.get(model, "postgres", "the read model")
        groups = [
            results.get(projector, "kafka", "the projector group"),
            results.get(worker, "kafka", "the worker group"),
        ]
        letters = results.get(dlq, "kafka", "the dead-letter topic")
    return StatusReport(
        data_dir=str(Path(settings.data_dir).absolute()),
        taken_at=time.time(),
        services=health,
        supervisor_pid=supervisor.process.pid if supervisor else None,
        supervisor_log=supervisor.log if supervisor else None,
        processes=_processes(supervisor),
        groups=tuple(g for g in groups if g is not None),
        dead_letters=letters,
        read_model=rm,
        errors=tuple(results.errors),
    )


class _Results:
    """Probe results; a failure is an error of the report only when the service it needs
    answered (one that is down is reported once, as down)."""

    def __init__(self, up: set[str]) -> None:
        self.up = up
        self.errors: list[str] = []

    def get(self, future: Future[T], needs: str, what: str) -> T | None:
        try:
            return future.result()
        except Exception as e:
            if needs in self.up:
                self.errors.append(f"could not read {what}: {e}")
            return None


def _services(stack: Stack) -> list[Service]:
    """The services settings call for (the log store only for an embedded broker on S3)."""
    wanted = [stack.service(n) for n in ORDER]
    return [svc for svc in wanted if svc.name != "log-store" or svc.embedded]


def _service(svc: Service, timeout: float) -> ServiceHealth:
    ok = svc.healthy(timeout)
    pid = svc.pid() if svc.embedded else None
    return ServiceHealth(
        name=svc.name,
        endpoint=svc.endpoint,
        healthy=ok,
        embedded=svc.embedded,
        pid=pid,
        detail="" if ok else ("starting or stuck" if pid else "down"),
    )


def _processes(supervisor: SupervisorState | None) -> tuple[ProcessInfo, ...]:
    if supervisor is None:
        return ()
    now = time.time()
    return tuple(
        ProcessInfo(
            name=c.name,
            role=c.role,
            state=c.state,
            pid=c.pid,
            restarts=c.restarts,
            failures=c.failures,
            last_exit=c.last_exit,
            log=c.log,
            seconds=now - c.since if c.state == RUNNING else max(0.0, (c.next_start or now) - now),
        )
        for c in supervisor.children
    )


def _liveness(
    admin: AdminClient,
    settings: Settings,
    role: Role,
    supervisor: SupervisorState | None,
    timeout: float,
) -> tuple[GroupStatus, bool]:
    """The group's liveness, and whether the broker answered."""
    group, topic = role.group(settings), role.topic(settings)
    view = describe_group(admin, group, timeout)
    children = supervised(supervisor, role.name)
    verdict, detail = judge(role, topic, view, children)
    running = tuple(c.pid for c in children if c.pid is not None and c.state == RUNNING)
    status = GroupStatus(
        role=role.name,
        group=group,
        topic=topic,
        verdict=verdict,
        detail=detail,
        members=view.members if view else None,
        supervised=running,
    )
    return status, view is not None


def _projector_group(
    settings: Settings,
    supervisor: SupervisorState | None,
    model: Future[ReadModelStats],
    timeout: float,
) -> GroupStatus:
    """Liveness, and the lag at the checkpoints the projector keeps in Postgres."""
    admin = make_admin(settings, log_level=0)
    status, answered = _liveness(admin, settings, PROJECTOR, supervisor, timeout)
    if not answered:
        return status  # no lag from a broker that does not answer (the kafka probe says so)
    try:
        checkpoints = {c.partition: c.next_offset for c in model.result().checkpoints}
    except Exception:
        return status  # the read model's own probe reports why
    heads = probe_topic(settings, status.topic, checkpoints, timeout=timeout)
    return _with_lag(status, heads, checkpoints)


def _worker_group(
    settings: Settings, supervisor: SupervisorState | None, timeout: float
) -> GroupStatus:
    """Liveness, and the lag at the offsets the workers committed to the broker."""
    admin = make_admin(settings, log_level=0)
    status, answered = _liveness(admin, settings, WORKER, supervisor, timeout)
    if not answered:
        return status
    workers = len(status.supervised) or status.members or 1
    status = replace(status, in_flight=settings.worker_concurrency * workers)
    committed = _committed(admin, status.group, status.topic, settings.partitions, timeout)
    heads = probe_topic(settings, status.topic, committed, timeout=timeout)
    return _with_lag(status, heads, committed)


def _committed(
    admin: AdminClient, group: str, topic: str, partitions: int, timeout: float
) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (partitions without one are left out:
    the group starts those at the earliest record)."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)]
    )
    try:
        future = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group]
        listed = future.result(timeout=timeout + 0.5)
    except KafkaException as e:
        raise TransientError(f"kafka: committed offsets of {group}: {e}") from e
    return {tp.partition: tp.offset for tp in listed.topic_partitions or () if tp.offset >= 0}


def _with_lag(
    status: GroupStatus, heads: dict[int, PartitionHead], positions: dict[int, int]
) -> GroupStatus:
    now = time.time()
    partitions = tuple(
        PartitionLag(
            partition=p,
            end=h.end,
            position=max(h.low, positions.get(p, h.low)),
            oldest_age=max(0.0, now - h.first_time) if h.first_time is not None else None,
        )
        for p, h in sorted(heads.items())
    )
    return replace(status, partitions=partitions)


def _dead_letters(settings: Settings, timeout: float) -> DeadLetters:
    heads = probe_topic(settings, settings.dlq_topic, timeout=timeout)
    times = [h.first_time for h in heads.values() if h.first_time is not None]
    return DeadLetters(
        topic=settings.dlq_topic,
        count=sum(max(0, h.end - h.low) for h in heads.values()),
        oldest_age=max(0.0, time.time() - min(times)) if times else None,
    )
