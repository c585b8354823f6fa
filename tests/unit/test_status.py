"""``blobledger status``'s verdict on plain reports: healthy, degraded, down, and why."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import pytest

from blobledger.infra.readmodel_stats import Checkpoint, ReadModelStats
from blobledger.infra.status import (
    DEGRADED,
    DOWN,
    HEALTHY,
    DeadLetters,
    GroupStatus,
    PartitionLag,
    ProcessInfo,
    ServiceHealth,
    StatusReport,
    classify,
)
from blobledger.infra.status_cli import render


def _group(
    role: str,
    *,
    verdict: str = "consuming",
    lags: Sequence[tuple[int, int, float | None]] = (),
    in_flight: int = 0,
) -> GroupStatus:
    """(end, position, oldest age) per partition."""
    topic = "bl.events" if role == "projector" else "bl.blob-commands"
    return GroupStatus(
        role=role,
        group=f"bl-{role}",
        topic=topic,
        verdict=verdict,
        detail=f"no {role} is consuming {topic}" if verdict == "none" else "1 run by up",
        members=None,
        supervised=(101,) if verdict == "consuming" else (),
        partitions=tuple(
            PartitionLag(p, end=end, position=pos, oldest_age=age)
            for p, (end, pos, age) in enumerate(lags)
        ),
        in_flight=in_flight,
    )


def _process(name: str, state: str = "running", failures: int = 0) -> ProcessInfo:
    return ProcessInfo(
        name=name,
        role=name.split("-")[0],
        state=state,
        pid=200 if state == "running" else None,
        restarts=failures,
        failures=failures,
        last_exit=1 if failures else None,
        log=f"/d/logs/{name}.log",
        seconds=12.0,
    )


def healthy_report() -> StatusReport:
    return StatusReport(
        data_dir="/d",
        taken_at=1.8e9,
        services=tuple(
            ServiceHealth(n, f"http://127.0.0.1:{i}", True, True, 10 + i)
            for i, n in enumerate(("postgres", "s3", "log-store", "kafka"))
        ),
        supervisor_pid=100,
        supervisor_log="/d/logs/supervisor.log",
        processes=(_process("projector-0"), _process("worker-0"), _process("reaper")),
        groups=(
            _group("projector", lags=[(5, 5, None), (3, 3, None)]),
            _group("worker", lags=[(2, 2, None), (0, 0, None)], in_flight=4),
        ),
        dead_letters=DeadLetters("bl.dlq", 0, None),
        read_model=ReadModelStats(
            exists=True,
            checkpoints=(Checkpoint(0, 5, 1.0), Checkpoint(1, 3, 2.0)),
            finished_last_hour={"stored": 2},
            events_last_minute=8,
            uploads_last_minute=2,
            bytes_last_minute=3 * 2**20,
        ),
    )


def test_all_running_and_caught_up_is_healthy() -> None:
    verdict = classify(healthy_report())
    assert verdict.state == HEALTHY and verdict.exit_code == 0 and verdict.reasons == ()


def test_a_service_that_does_not_answer_is_down_whatever_else() -> None:
    report = healthy_report()
    services = (replace(report.services[0], healthy=False), *report.services[1:])
    report = replace(report, services=services, dead_letters=DeadLetters("bl.dlq", 3, 9.0))
    verdict = classify(report)
    assert verdict.state == DOWN and verdict.exit_code == 2
    assert verdict.reasons == ("postgres does not answer at http://127.0.0.1:0",)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"groups": (_group("projector", verdict="none"), _group("worker"))},
            "no projector is consuming bl.events",
        ),
        ({"dead_letters": DeadLetters("bl.dlq", 2, 30.0)}, "2 dead letter(s) in bl.dlq"),
        (
            {"read_model": ReadModelStats(exists=True, pending_uploads=3, past_deadline=1)},
            "1 pending upload(s) past their deadline",
        ),
        (
            {"processes": (_process("projector-0", "backoff", failures=4),)},
            "projector-0 is not running (backoff: exited 4 time(s) in a row, last status 1)",
        ),
        (
            {"groups": (_group("projector", lags=[(90, 10, 75.0)]),)},
            "projector group bl-projector is 80 behind on bl.events; the oldest unprocessed "
            "record waited 75 s",
        ),
        ({"errors": ("could not read the read model: boom",)}, "could not read the read model"),
    ],
)
def test_work_not_getting_done_is_degraded(change: dict[str, object], reason: str) -> None:
    verdict = classify(replace(healthy_report(), **change))  # type: ignore[arg-type]
    assert verdict.state == DEGRADED and verdict.exit_code == 1
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_young_backlog_or_uploads_in_flight_are_not_a_problem() -> None:
    groups = (
        # behind, but the oldest waiting event is 2 s old: a burst being folded
        _group("projector", lags=[(500, 100, 2.0)]),
        # an old command, but no more than the workers hold in flight (long transfers)
        _group("worker", lags=[(7, 4, 900.0)], in_flight=4),
    )
    assert classify(replace(healthy_report(), groups=groups)).state == HEALTHY
    queued = (_group("worker", lags=[(9, 4, 900.0)], in_flight=4),)
    assert classify(replace(healthy_report(), groups=queued)).state == DEGRADED


def test_reports_render_as_text_and_json() -> None:
    report = replace(healthy_report(), dead_letters=DeadLetters("bl.dlq", 2, 30.0))
    verdict = classify(report)
    text = render(report, verdict)
    assert text.startswith("blobledger DEGRADED (exit 1)")
    assert "projector-0  running  pid 200" in text
    assert "bl.events: lag 0" in text and "p0=5/5 p1=3/3" in text
    assert "dead letters  2 in bl.dlq" in text
    body = json.loads(json.dumps(report.to_json()))
    assert [g["lag"] for g in body["groups"]] == [0, 0]
    assert body["read_model"]["checkpoints"][0] == {"partition": 0, "next_offset": 5, "age": 1.0}
