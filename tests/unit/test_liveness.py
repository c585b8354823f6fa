"""Is anyone consuming? The verdict from the supervisor's state and the broker's group
view, and a read-your-writes wait that gives up early when the answer is no."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from blobledger.infra.liveness import (
    CONSUMING,
    JOINING,
    NONE,
    PROJECTOR,
    RESTARTING,
    UNKNOWN,
    WORKER,
    GroupView,
    judge,
)
from blobledger.infra.settings import Settings
from blobledger.infra.supervisor_state import BACKOFF, RUNNING, ChildState, ProcessRef
from blobledger.projectors.waiter import OutcomeWaiter
from blobledger.schemas.errors import NotRunningError, TimeoutExpired
from blobledger.schemas.receipts import Receipt


def _child(state: str, failures: int = 0) -> ChildState:
    return ChildState(
        name="projector-0",
        role="projector",
        state=state,
        log="/d/logs/projector-0.log",
        process=ProcessRef(4242, 1.0) if state == RUNNING else None,
        failures=failures,
        last_exit=1 if failures else None,
    )


@pytest.mark.parametrize(
    ("group", "verdict"),
    [
        (GroupView("empty", 0), NONE),  # every member left (or none ever joined)
        (GroupView("dead", 0), NONE),  # Apache Kafka: the group is gone
        (GroupView("stable", 2), CONSUMING),  # Apache Kafka lists its members
        (GroupView("stable", None), CONSUMING),  # Tansu lists none
        (GroupView("preparing_rebalance", None), JOINING),
        (GroupView("unknown", None), JOINING),  # Tansu while the first member joins
        (None, UNKNOWN),  # the broker did not answer: no grounds to give up a wait
    ],
)
def test_the_broker_view_alone(group: GroupView | None, verdict: str) -> None:
    got, detail = judge(PROJECTOR, "bl.events", group, [])
    assert got == verdict
    if verdict == NONE:
        assert detail == (
            "no projector is consuming bl.events; start one with `blobledger up` "
            "(or `blobledger projector`)"
        )


def test_the_supervisor_outranks_the_broker() -> None:
    # a child that is still joining looks like an empty group to the broker
    assert judge(PROJECTOR, "t", GroupView("empty", 0), [_child(RUNNING)])[0] == CONSUMING
    # a restart in progress is not a reason to give up
    assert judge(PROJECTOR, "t", GroupView("empty", 0), [_child(BACKOFF, 1)])[0] == RESTARTING
    # ...but a crash loop is, even while the broker still calls a dead member stable
    verdict, detail = judge(WORKER, "t", GroupView("stable", None), [_child(BACKOFF, 3)])
    assert verdict == NONE
    assert "keeps exiting (3 times in a row, last status 1)" in detail
    assert "/d/logs/projector-0.log" in detail


class Calls:
    def __init__(self, answer: Exception | None) -> None:
        self.answer = answer
        self.times: list[float] = []

    def __call__(self, receipt: Receipt) -> None:
        self.times.append(time.monotonic())
        if self.answer is not None:
            raise self.answer


def _waiter(tmp_path: Path, check: Calls) -> OutcomeWaiter:
    # nothing listens on this port: the waiter's thread keeps reconnecting, no outcome comes
    settings = Settings(data_dir=tmp_path, postgres_dsn="postgresql://x@127.0.0.1:9/none")
    waiter = OutcomeWaiter(settings, projector_check=check)
    waiter.ASK_AFTER, waiter.ASK_EVERY = 0.2, 0.2
    return waiter


def test_a_wait_ends_early_when_no_projector_consumes(tmp_path: Path) -> None:
    check = Calls(NotRunningError("no projector is consuming bl.events"))
    waiter = _waiter(tmp_path, check)
    began = time.monotonic()
    with pytest.raises(NotRunningError, match="no projector") as raised:
        waiter.wait(Receipt("e1", "o1", "bl.events", 0, 7), timeout=30)
    waiter.close()
    assert 0.15 < time.monotonic() - began < 5
    assert isinstance(raised.value, TimeoutExpired)  # callers that handle timeouts handle it
    assert waiter._pending == {}


def test_a_wait_with_a_consuming_projector_asks_again_and_times_out_as_before(
    tmp_path: Path,
) -> None:
    check = Calls(None)
    waiter = _waiter(tmp_path, check)
    with pytest.raises(TimeoutExpired, match=r"bl.events\[0\]@7") as raised:
        waiter.wait(Receipt("e1", "o1", "bl.events", 0, 7), timeout=1.0)
    waiter.close()
    assert not isinstance(raised.value, NotRunningError)
    assert 2 <= len(check.times) <= 6  # every ASK_EVERY, not in a tight loop
