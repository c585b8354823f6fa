"""Retry policies (tenacity) and a small thread-safe circuit breaker.

Only :class:`TransientError` is retried. The breaker counts consecutive transient
failures of one dependency; once open it refuses calls at once (``CircuitOpenError``,
itself transient) so a dead S3 costs a fast failure instead of a timeout per part, and
it lets one trial call through after ``reset_timeout`` (half-open). Every change of
state is reported to the ``blobledger_circuit_state`` gauge (infra/metrics.py).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from blobledger.infra.metrics import record_circuit_state
from blobledger.schemas.errors import CircuitOpenError, TransientError

T = TypeVar("T")


def retrying(
    attempts: int,
    *,
    initial: float = 0.2,
    max_wait: float = 10.0,
    deadline: float | None = None,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> Retrying:
    """A policy: retry TransientError with full-jitter exponential backoff, at most
    ``attempts`` tries and (optionally) until ``deadline`` seconds have passed; the last
    error is re-raised as is, so callers see a project error, never ``RetryError``."""
    stop: stop_base = stop_after_attempt(max(1, attempts))
    if deadline is not None:
        stop = stop | stop_after_delay(deadline)

    def before_sleep(state) -> None:  # type: ignore[no-untyped-def]
        if on_retry and state.outcome is not None and state.outcome.failed:
            on_retry(state.outcome.exception(), state.attempt_number)

    return Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=wait_random_exponential(multiplier=initial, max=max_wait),
        stop=stop,
        reraise=True,
        before_sleep=before_sleep,
    )


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive transient failures;
    open -> half-open after ``reset_timeout`` s; one half-open trial closes or reopens it."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        record_circuit_state(name, self._state.value)

    def _become(self, state: BreakerState) -> None:
        """Change state (under the lock), reporting a change to the gauge."""
        if state is not self._state:
            self._state = state
            record_circuit_state(self.name, state.value)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout
        ):
            self._become(BreakerState.HALF_OPEN)
            self._trial_running = False
        return self._state

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go through now."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            wait = max(0.0, self.reset_timeout - (self._clock() - self._opened_at))
        raise CircuitOpenError(
            f"{self.name} circuit open after {self.failure_threshold} consecutive failures; "
            f"next trial in {wait:.1f}s"
        )

    def record_success(self) -> None:
        with self._lock:
            self._become(BreakerState.CLOSED)
            self._failures = 0
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._become(BreakerState.OPEN)
                self._opened_at = self._clock()
                self._trial_running = False

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block through the breaker. Only TransientError counts as a failure: a
        404 or a bad request says nothing about the dependency's health."""
        self.before_call()
        try:
            yield
        except TransientError as e:
            if not isinstance(e, CircuitOpenError):
                self.record_failure()
            raise
        except Exception:
            self.record_success()  # the dependency answered, just not with what we wanted
            raise
        except BaseException:
            with self._lock:  # interrupted: neither health signal; free the half-open slot
                self._trial_running = False
            raise
        else:
            self.record_success()

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        with self.guard():
            return fn(*args, **kwargs)
