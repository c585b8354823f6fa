"""Is anyone consuming what a command is about to wait on?

A command that waits for the projection (read-your-writes) or for a blob worker (``put``)
would otherwise wait out its whole timeout, 30 s or an hour, when no such process runs.
Two witnesses, asked in this order:

1. the supervisor of ``blobledger up`` (its state file, rewritten every second): a live
   child of the role is proof; children that all keep crashing are proof of the opposite;
2. the broker: the consumer group's state (``DescribeGroups``). Empty or dead means no
   member. Apache Kafka also lists the members; Tansu 0.6 lists none, and keeps a group
   "stable" after its last member was SIGKILLed (until another member joins), so there
   a crashed process started by hand goes unnoticed and the wait times out as before.

A broker that does not answer proves nothing: the check then stays out of the way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from blobledger.infra import supervisor_state
from blobledger.infra.kafka import make_admin
from blobledger.infra.settings import Settings
from blobledger.infra.supervisor_state import BACKOFF, RUNNING, ChildState, SupervisorState
from blobledger.schemas.errors import NotRunningError

#: verdicts
CONSUMING, JOINING, RESTARTING, NONE, UNKNOWN = (
    "consuming",
    "joining",
    "restarting",
    "none",
    "unknown",
)
#: supervised children that exited this many times in a row, each soon after starting,
#: are not coming back by themselves (a restart pause has reached 4 s by then)
CRASH_LOOP = 3


@dataclass(frozen=True)
class Role:
    name: str
    #: what the messages call it
    noun: str
    #: the ``blobledger`` subcommand that runs one
    command: str

    def group(self, settings: Settings) -> str:
        return settings.projector_group if self.name == "projector" else settings.worker_group

    def topic(self, settings: Settings) -> str:
        return settings.events_topic if self.name == "projector" else settings.commands_topic


PROJECTOR = Role("projector", "projector", "projector")
WORKER = Role("worker", "blob worker", "worker")
ROLES = {r.name: r for r in (PROJECTOR, WORKER)}


@dataclass(frozen=True)
class GroupView:
    """A consumer group as the broker describes it."""

    #: the broker's word, lower case: stable, empty, dead, preparing_rebalance, ...
    state: str
    #: None where the broker does not list members (Tansu)
    members: int | None


@dataclass(frozen=True)
class Consumers:
    role: str
    group: str
    topic: str
    verdict: str
    members: int | None
    #: pids of the supervised processes of this role that run now
    supervised: tuple[int, ...]
    detail: str

    @property
    def absent(self) -> bool:
        """Nothing consumes, and nothing is about to."""
        return self.verdict == NONE


def supervised(supervisor: SupervisorState | None, role: str) -> list[ChildState]:
    """The children of ``role`` a live supervisor reports (none from a stale state)."""
    return supervisor.of_role(role) if supervisor is not None and supervisor.fresh() else []


def judge(
    role: Role, topic: str, group: GroupView | None, children: list[ChildState]
) -> tuple[str, str]:
    """(verdict, detail) from what the two witnesses said: the broker's view of the
    group and the :func:`supervised` children of the role. Pure."""
    missing = (
        f"no {role.noun} is consuming {topic}; start one with `blobledger up` "
        f"(or `blobledger {role.command}`)"
    )
    if children:
        running = [c for c in children if c.state == RUNNING]
        if running:
            return CONSUMING, f"{len(running)} run by `blobledger up`"
        if all(c.state == BACKOFF and c.failures >= CRASH_LOOP for c in children):
            worst = max(children, key=lambda c: c.failures)
            return NONE, (
                f"no {role.noun} is consuming {topic}: the one `blobledger up` runs keeps "
                f"exiting ({worst.failures} times in a row, last status {worst.last_exit}); "
                f"see {worst.log}"
            )
        return RESTARTING, f"the {role.noun} run by `blobledger up` is restarting"
    if group is None:
        return UNKNOWN, "the broker did not describe the group"
    if group.members:
        return CONSUMING, f"{group.members} member(s)"
    if group.state in ("empty", "dead"):
        return NONE, missing
    if group.state == "stable":
        return CONSUMING, "the group is stable (the broker lists no members)"
    return JOINING, f"the group is {group.state.replace('_', ' ')}"


def describe_group(admin: AdminClient, group: str, timeout: float) -> GroupView | None:
    """The group's state, or None when the broker does not answer in time."""
    try:
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        described = future.result(timeout=timeout + 0.5)
    except (KafkaException, TimeoutError):
        return None
    state = described.state
    name = state.name.lower() if isinstance(state, ConsumerGroupState) else str(state).lower()
    listed = len(described.members or [])
    if name in ("empty", "dead"):
        return GroupView(name, 0)
    return GroupView(name, listed or None)


def broker_answers(bootstrap: str, timeout: float = 0.3) -> bool:
    """Whether some bootstrap broker accepts a TCP connection within ``timeout``."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except OSError:
            continue
    return False


class Liveness:
    """Asks the witnesses on demand; one admin client, made at the first question."""

    def __init__(self, settings: Settings, *, timeout: float = 1.5) -> None:
        self.settings = settings
        self.timeout = timeout
        self._admin: AdminClient | None = None

    def consumers(self, role: Role) -> Consumers:
        group, topic = role.group(self.settings), role.topic(self.settings)
        children = supervised(supervisor_state.read_state(self.settings), role.name)
        view = None
        # The supervisor's word is enough when it runs the role. Otherwise the broker is
        # asked, but only when it answers a connect right now: an admin request left
        # outstanding while the broker goes away can make librdkafka 2.x abort the whole
        # process in describe_consumer_groups (librdkafka#5397; found by the chaos run).
        if not children and broker_answers(self.settings.bootstrap_servers):
            if self._admin is None:
                # log_level 0: a broker that is down is the waiting command's business
                self._admin = make_admin(self.settings, log_level=0)
            view = describe_group(self._admin, group, self.timeout)
        verdict, detail = judge(role, topic, view, children)
        pids = tuple(c.pid for c in children if c.pid is not None and c.state == RUNNING)
        return Consumers(
            role.name, group, topic, verdict, view.members if view else None, pids, detail
        )

    def require(self, role: Role, consequence: str = "") -> None:
        """Raise :class:`NotRunningError` when nothing consumes for ``role``;
        ``consequence`` says what that means for the caller's work."""
        found = self.consumers(role)
        if found.absent:
            raise NotRunningError(f"{found.detail}{'; ' + consequence if consequence else ''}")

    def watch(self, role: Role, consequence: str = "", every: float = 5.0) -> Callable[[], None]:
        """:meth:`require`, at most once per ``every`` seconds, for a polling loop."""
        last = -every

        def check() -> None:
            nonlocal last
            if time.monotonic() - last >= every:
                last = time.monotonic()
                self.require(role, consequence)

        return check
