"""Retry policy and circuit breaker (infra/retry.py), plus S3 error translation."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from blobledger.infra.retry import BreakerState, CircuitBreaker, retrying
from blobledger.infra.s3 import S3ChecksumMismatch, S3NotFound, translate
from blobledger.schemas.errors import CircuitOpenError, PermanentError, TransientError
from tests.unit.fake_s3 import client_error


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fail(kind: type[Exception]) -> None:
    raise kind("boom")


def test_breaker_opens_after_consecutive_transient_failures_and_half_opens() -> None:
    clock = Clock()
    b = CircuitBreaker("s3", failure_threshold=3, reset_timeout=10, clock=clock)
    for _ in range(3):
        with pytest.raises(TransientError):
            b.call(_fail, TransientError)
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(lambda: 1)
    clock.now = 10
    assert b.state is BreakerState.HALF_OPEN
    assert b.call(lambda: 1) == 1  # the trial succeeds
    assert b.state is BreakerState.CLOSED


def test_failed_half_open_trial_reopens() -> None:
    clock = Clock()
    b = CircuitBreaker("s3", failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(TransientError):
        b.call(_fail, TransientError)
    clock.now = 5
    with pytest.raises(TransientError):
        b.call(_fail, TransientError)
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(lambda: 1)


def test_only_one_trial_while_half_open() -> None:
    clock = Clock()
    b = CircuitBreaker("s3", failure_threshold=1, reset_timeout=1, clock=clock)
    with pytest.raises(TransientError):
        b.call(_fail, TransientError)
    clock.now = 1
    b.before_call()  # the trial is running
    with pytest.raises(CircuitOpenError):
        b.before_call()


def test_permanent_errors_do_not_trip_the_breaker() -> None:
    b = CircuitBreaker("s3", failure_threshold=1)
    with pytest.raises(PermanentError):
        b.call(_fail, PermanentError)
    assert b.state is BreakerState.CLOSED


def test_success_resets_the_count() -> None:
    b = CircuitBreaker("s3", failure_threshold=2)
    with pytest.raises(TransientError):
        b.call(_fail, TransientError)
    b.call(lambda: None)
    with pytest.raises(TransientError):
        b.call(_fail, TransientError)
    assert b.state is BreakerState.CLOSED


def test_retrying_retries_transient_only_and_reraises_the_last_error() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("again")
        return "ok"

    for attempt in retrying(5, initial=0.001, max_wait=0.001):
        with attempt:
            result = flaky()
    assert result == "ok" and len(calls) == 3

    calls.clear()
    with pytest.raises(PermanentError):
        for attempt in retrying(5, initial=0.001, max_wait=0.001):
            with attempt:
                calls.append(1)
                raise PermanentError("no")
    assert len(calls) == 1

    with pytest.raises(TransientError, match="still"):
        for attempt in retrying(3, initial=0.001, max_wait=0.001):
            with attempt:
                raise TransientError("still")


@pytest.mark.parametrize(
    "error, kind",
    [
        (client_error("SlowDown", 503, "PutObject"), TransientError),
        (client_error("InternalError", 500, "UploadPart"), TransientError),
        (client_error("NoSuchUpload", 404, "UploadPart"), S3NotFound),
        (client_error("404", 404, "HeadObject"), S3NotFound),
        (client_error("BadDigest", 400, "UploadPart"), S3ChecksumMismatch),
        (client_error("AccessDenied", 403, "PutObject"), PermanentError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
    ],
)
def test_s3_error_translation(error: Exception, kind: type[Exception]) -> None:
    out = translate(error)
    assert isinstance(out, kind)
    if kind is PermanentError:
        assert not isinstance(out, (S3NotFound, S3ChecksumMismatch))
