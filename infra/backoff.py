"""When to restart a supervised process that exited: exponential backoff, forgiven after
a stable run.

A process that dies at start-up (bad settings, a service still down) would otherwise be
restarted in a tight loop, flooding its log and the CPU; one that ran for a long time
and then crashed should come back at once. Pure: the supervisor passes in how long the
process ran, so the policy is tested on plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartBackoff:
    #: pause before the first restart after a stable run
    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    #: a run at least this long resets the count: the next crash is a new incident
    stable_after: float = 30.0
    #: exits in a row that each came before ``stable_after``
    failures: int = 0

    def delay(self, uptime: float) -> float:
        """Seconds to wait before restarting a process that exited after ``uptime`` s."""
        if uptime >= self.stable_after:
            self.failures = 0
        self.failures += 1
        return min(self.maximum, self.initial * self.factor ** (self.failures - 1))
