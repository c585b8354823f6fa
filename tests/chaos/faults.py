"""What goes wrong during a chaos run, planned up front from the seed, then carried out.

Two timelines run side by side: SIGKILLs of the supervised processes (each restarted after
a short random pause) and outages of one service at a time (broker, Postgres, blob store)
for a few seconds each. The plan is a pure function of (seed, seconds), so a failing run
is replayed by passing its seed again; the timing of the system under test is not.
Every process kind and every service is hit at least once, whatever the length.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from blobledger.infra.testing import RunningStack, ServiceName

from .processes import Supervisor

SERVICES: tuple[ServiceName, ...] = ("kafka", "postgres", "s3")
#: one kill every this many seconds on average
KILL_EVERY = 7.0
#: one outage every this many seconds on average (at least one per service)
OUTAGE_EVERY = 20.0


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load started
    kind: str  # kill | outage
    target: str  # a process name or a service name
    hold: float  # seconds down before the restart


def plan(seed: int, seconds: float, processes: list[str]) -> list[Fault]:
    """The faults of a run, in time order. Kills: the first ones cover every process in a
    seeded order, the rest pick at random. Outages: one per slot, never overlapping."""
    rng = random.Random(f"{seed}:faults")
    kills = max(len(processes), round(seconds / KILL_EVERY))
    targets = rng.sample(processes, len(processes))
    targets += [rng.choice(processes) for _ in range(kills - len(targets))]
    times = sorted(rng.uniform(2.0, max(3.0, seconds - 3.0)) for _ in targets)
    faults = [
        Fault(t, "kill", name, rng.uniform(0.0, 3.0))
        for t, name in zip(times, targets, strict=True)
    ]
    outages = max(len(SERVICES), round(seconds / OUTAGE_EVERY))
    services = rng.sample(SERVICES, len(SERVICES))
    services += [rng.choice(SERVICES) for _ in range(outages - len(services))]
    slot = seconds / outages
    for i, service in enumerate(services):
        hold = rng.uniform(3.0, 7.0)
        start = i * slot + rng.uniform(1.0, max(1.0, slot - hold - 8.0))
        faults.append(Fault(start, "outage", service, hold))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Done:
    """A fault as it happened (seconds from the start of the load)."""

    fault: Fault
    began: float
    ended: float
    effective: bool  # False: the process was already down (nothing was killed)
    error: str = ""


class Monkey:
    """Carries out a plan on the stack and the supervisor, one thread per timeline."""

    def __init__(self, stack: RunningStack, supervisor: Supervisor, faults: list[Fault]) -> None:
        self.stack = stack
        self.supervisor = supervisor
        self.faults = faults
        self.done: list[Done] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = 0.0
        self._threads = [
            threading.Thread(target=self._timeline, args=(kind,), name=f"chaos-{kind}")
            for kind in ("kill", "outage")
        ]

    def start(self) -> None:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop starting faults; the one in progress ends (its service or process is back)."""
        self._stop.set()
        for t in self._threads:
            t.join()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _timeline(self, kind: str) -> None:
        for fault in (f for f in self.faults if f.kind == kind):
            if self._stop.wait(max(0.0, fault.at - self._now())):
                return
            began = self._now()
            effective, error = True, ""
            if kind == "kill":
                effective = self.supervisor.kill(fault.target)
                time.sleep(fault.hold)
                self.supervisor.revive(fault.target)
            else:
                try:
                    error = self._outage(fault)
                except Exception as e:  # the service stays down: the run reports it
                    error = f"{type(e).__name__}: {e}"
            with self._lock:
                self.done.append(Done(fault, began, self._now(), effective, error))

    def _outage(self, fault: Fault) -> str:
        service: ServiceName = fault.target  # type: ignore[assignment]
        self.stack.stop(service)
        time.sleep(fault.hold)
        last = ""
        for _ in range(3):  # a start that fails is retried: the stack must come back
            try:
                self.stack.start(service)
                return last
            except Exception as e:
                last = f"start of {service} failed: {e}"
                time.sleep(2.0)
        raise RuntimeError(last)
