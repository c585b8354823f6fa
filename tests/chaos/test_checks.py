"""The chaos run's verdicts, on made-up ledgers: a check that could not fail would let a
chaos run "pass" whatever happened. No services."""

from __future__ import annotations

from collections import Counter

from .checks import LogScan, ReadModelState, check_commands, check_uploads
from .load import Record
from .sources import Source

GOOD = Source("file", "/x/blob.bin", "a" * 64, 10)


def scan_of(*event_ids: str) -> LogScan:
    return LogScan(counts=Counter(event_ids), ends={0: len(event_ids)})


def test_a_clean_run_has_no_problems_and_counts_unknown_outcomes():
    records = [
        Record("alice", "create", "k", "accepted", "e1", version=1),
        Record("alice", "update", "k", "rejected", "e2", reason="conflict", version=1),
        Record("alice", "update", "k", "unknown_outcome", "e3"),
        Record("alice", "update", "k", "unknown_publish", "e4"),  # never reached the log
        Record("alice", "update", "k", "refused", reason="forbidden"),
    ]
    rm = ReadModelState(
        outcomes={
            "e1": ("accepted", None, 1),
            "e2": ("rejected", "conflict", 1),
            "e3": ("accepted", None, 2),
        },
        version_rows=Counter({"e1": 1, "e3": 1}),
    )
    counts, problems = check_commands(records, rm, scan_of("e1", "e2", "e3"))
    assert problems == []
    assert (counts["lost"], counts["duplicated"], counts["unknown_outcome"]) == (0, 0, 2)
    assert (counts["unknown_publish_absent"], counts["refused"]) == (1, 1)


def test_lost_duplicated_and_mismatched_commands_are_problems():
    records = [
        Record("alice", "create", "a", "accepted", "lost-1", version=1),
        Record("alice", "update", "a", "accepted", "dup-1", version=2),
        Record("alice", "update", "a", "rejected", "other", reason="conflict", version=2),
        Record("alice", "update", "a", "unknown_publish", "logged-only"),
    ]
    rm = ReadModelState(
        outcomes={"dup-1": ("accepted", None, 2), "other": ("rejected", "forbidden", 2)},
        version_rows=Counter({"dup-1": 2}),
    )
    counts, problems = check_commands(records, rm, scan_of("dup-1", "other", "logged-only"))
    assert counts["lost"] == 2  # the accepted create, and the event only the log holds
    assert (counts["duplicated"], counts["mismatched"]) == (1, 1)
    assert len(problems) == 4


def test_a_log_that_cannot_be_read_to_its_end_is_a_problem():
    _, problems = check_commands([], ReadModelState(), LogScan(stuck={2: 17}))
    assert problems and "{2: 17}" in problems[0]


def test_uploads_pending_or_completed_from_a_failing_source_are_problems():
    missing = Source("missing-file", "/x/missing.bin")
    records = [
        Record("dave", "attach", "b", "accepted", "e1", upload_id="u1", source=GOOD),
        Record("dave", "attach", "b", "accepted", "e2", upload_id="u2", source=missing),
        Record("dave", "attach", "b", "accepted", "e3", upload_id="u3", source=GOOD),
        Record("dave", "attach", "b", "accepted", "e4", upload_id="u4", source=GOOD),
    ]
    rm = ReadModelState(
        uploads={
            "u1": ("stored", GOOD.sha256, GOOD.size, "blobs/k", None),
            "u2": ("orphaned", "b" * 64, 3, "blobs/j", None),
            "u3": ("pending", None, None, None, None),
            "u4": ("stored", "c" * 64, GOOD.size, "blobs/m", None),
        }
    )
    counts, problems = check_uploads(records, rm)
    assert counts["uploads_good_stored"] == 2
    assert [p.split(" ")[0:2] for p in problems] == [
        ["1", "uploads"],
        ["upload", "u2"],
        ["upload", "u4"],
    ]
