"""One contract for read-your-writes (``OutcomeSource``): ``OutcomeWaiter`` over a Postgres
read model (woken by the checkpoint NOTIFY) and the in-memory twin ``InMemoryOutcomes``
over an ``InMemoryReadModel`` (woken by each commit). A wait ends once the checkpoint of
the receipt's partition has passed its offset, with the fold's outcome for its event, and
times out the same way when it has not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blobledger.infra.postgres import connect
from blobledger.infra.settings import Settings
from blobledger.projectors.applier import Record, apply_isolating
from blobledger.projectors.memory import InMemoryOutcomes, InMemoryReadModel
from blobledger.projectors.migrate import migrate
from blobledger.projectors.ports import ReadModelPort
from blobledger.projectors.readmodel import ReadModel
from blobledger.projectors.waiter import OutcomeWaiter
from blobledger.schemas.errors import TimeoutExpired, TransientError
from blobledger.schemas.events import (
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    new_id,
    object_id_for,
)
from blobledger.schemas.ports import OutcomeSource
from blobledger.schemas.receipts import EventOutcome, Receipt

TOPIC = "contract.events"


@dataclass
class Subject:
    model: ReadModelPort
    outcomes: OutcomeSource


def _memory(tmp: Path) -> Iterator[Subject]:
    settings = Settings.from_env({"BLOBLEDGER_DATA_DIR": str(tmp)})
    model = InMemoryReadModel()
    outcomes = InMemoryOutcomes(model, settings)
    yield Subject(model, outcomes)
    outcomes.close()


def _postgres(settings: Settings) -> Iterator[Subject]:
    with connect(settings) as conn:
        migrate(conn, settings.read_model_schema)
        waiter = OutcomeWaiter(settings)
        try:
            yield Subject(ReadModel(conn, settings.read_model_schema), waiter)
        finally:
            waiter.close()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "memory":
        yield from _memory(tmp_path)
    else:
        yield from _postgres(request.getfixturevalue("settings"))


class Log:
    """Events at known positions, folded a batch at a time."""

    def __init__(self, subject: Subject) -> None:
        self.model = subject.model
        self.next = {0: 0, 1: 0}

    def fold(self, partition: int, events: Sequence[Event | None]) -> list[Receipt]:
        start = self.next[partition]
        recs = [Record(TOPIC, partition, start + i, e) for i, e in enumerate(events)]
        self.next[partition] += len(recs)

        def refuse(rec: Record, error: Exception) -> None:
            raise AssertionError(f"nothing here is poison: {rec} {error}")

        apply_isolating(self.model, TOPIC, recs, None, refuse)
        return [receipt(e, partition, r.offset) for e, r in zip(events, recs, strict=True) if e]


def receipt(event: Event, partition: int, offset: int) -> Receipt:
    return Receipt(event.event_id, event.object_id, TOPIC, partition, offset)


#: the object's id follows from its key, as the fold requires of a create
K = object_id_for("default", "k")


def env(oid: str, actor: str = "alice", **kw: Any) -> Envelope:
    return Envelope(object_id=oid, actor=actor, **kw)


def test_accepted_outcomes_once_folded(subject: Subject) -> None:
    oid = K
    created = ObjectCreated(env(oid), key="k")
    updated = MetadataUpdated(env(oid, expected_version=1), patch_json='{"n":1}')
    r_created, r_updated = Log(subject).fold(0, [created, updated])
    out = subject.outcomes.wait(r_created, timeout=5)
    assert out == EventOutcome(created.event_id, oid, "accepted", None, 1) and out.accepted
    assert subject.outcomes.wait(r_updated, timeout=5) == EventOutcome(
        updated.event_id, oid, "accepted", None, 2
    )


def test_rejected_outcomes_say_why(subject: Subject) -> None:
    oid, missing = K, new_id()
    stale = MetadataUpdated(env(oid, expected_version=7), patch_json='{"n":1}')
    foreign = MetadataUpdated(env(oid, "mallory"), patch_json='{"n":2}')
    nowhere = MetadataUpdated(env(missing), patch_json='{"n":3}')
    receipts = Log(subject).fold(1, [ObjectCreated(env(oid), key="k"), stale, foreign, nowhere])
    got = [subject.outcomes.wait(r, timeout=5) for r in receipts[1:]]
    assert got == [
        EventOutcome(stale.event_id, oid, "rejected", "conflict", 1),
        EventOutcome(foreign.event_id, oid, "rejected", "forbidden", 1),
        EventOutcome(nowhere.event_id, missing, "rejected", "not_found", 0),
    ]
    assert not any(o.accepted for o in got)


def test_times_out_until_the_checkpoint_passes(subject: Subject) -> None:
    log = Log(subject)
    oid = K
    log.fold(0, [ObjectCreated(env(oid), key="k")])
    later = MetadataUpdated(env(oid), patch_json='{"n":1}')
    ahead = receipt(later, 0, 1)  # published, not folded yet: the checkpoint is 1
    for r in (ahead, receipt(later, 1, 0)):  # partition 1 has no checkpoint at all
        began = time.monotonic()
        with pytest.raises(TimeoutExpired, match=rf"{TOPIC}\[{r.partition}\]@{r.offset}"):
            subject.outcomes.wait(r, timeout=0.3)
        assert time.monotonic() - began >= 0.25  # it waited, it did not give up at once
    assert log.fold(0, [later]) == [ahead]
    assert subject.outcomes.wait(ahead, timeout=5).version == 2


def test_a_waiter_wakes_when_the_fold_passes(subject: Subject) -> None:
    log = Log(subject)
    oid = K
    created = ObjectCreated(env(oid), key="k")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(subject.outcomes.wait, receipt(created, 0, 0), 20)
        time.sleep(0.2)
        assert not waiting.done()
        began = time.monotonic()
        log.fold(0, [created])
        out = waiting.result(timeout=10)
    assert out == EventOutcome(created.event_id, oid, "accepted", None, 1)
    assert time.monotonic() - began < 5  # woken by the commit, not by the timeout


def test_passed_without_an_outcome_is_not_a_timeout(subject: Subject) -> None:
    """A dead-lettered record moves the checkpoint without an outcome: the wait fails at
    once with a transient error that points at the DLQ, instead of timing out."""
    oid = new_id()
    lost = ObjectCreated(env(oid), key="k")
    Log(subject).fold(0, [None, ObjectCreated(env(new_id()), key="j")])
    began = time.monotonic()
    with pytest.raises(TransientError, match="without an outcome") as raised:
        subject.outcomes.wait(receipt(lost, 0, 0), timeout=5)
    assert not isinstance(raised.value, TimeoutExpired)
    assert time.monotonic() - began < 4
