"""Topics exist before anyone needs them, with the configured partitions (infra/topics.py).

Each test runs on topic names nobody created (the ``settings`` fixture makes its own; these
get another prefix) and on a partition count that is neither the default nor the broker's
auto-creation default, so a topic's count shows who made it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobledger.infra import bootstrap
from blobledger.infra.kafka import make_admin
from blobledger.infra.settings import Settings
from blobledger.infra.testing import RunningStack
from blobledger.infra.topics import delete_topics, ensure_topics, topic_names

from .support import Proc, ThreadedProjector, child_env, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 5


@pytest.fixture
def fresh(settings: Settings) -> Iterator[Settings]:
    s = settings.with_(topic_prefix=f"{settings.topic_prefix}-fresh", partitions=PARTITIONS)
    assert not partitions_of(s)
    yield s
    delete_topics(s, topic_names(s))


def partitions_of(s: Settings) -> dict[str, int]:
    """The project topics the broker has, with their partition counts."""
    listed = make_admin(s).list_topics(timeout=10).topics
    return {n: len(listed[n].partitions) for n in topic_names(s) if n in listed}


def all_made_by_us(s: Settings) -> dict[str, int]:
    return dict.fromkeys(topic_names(s), PARTITIONS)


def test_a_projector_started_before_its_topics_makes_them_and_folds(fresh: Settings) -> None:
    with ThreadedProjector(fresh), bootstrap.client(fresh, actor="tester") as client:
        assert partitions_of(fresh) == all_made_by_us(fresh)
        result = client.create("topics/first.txt", {"a": 1})
    assert result.outcome is not None and result.outcome.status == "accepted"


def test_the_first_publish_creates_missing_topics_with_the_configured_partitions(
    fresh: Settings,
) -> None:
    with bootstrap.client(fresh, actor="tester") as client:
        receipt = client.create("topics/made-by-client.txt", {"a": 1}, wait=False).receipt
    assert receipt.topic == fresh.events_topic
    # not the broker's auto-creation default: the producer never lets it create a topic
    assert partitions_of(fresh) == all_made_by_us(fresh)


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", *args],
        env=child_env(s),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_topic_with_another_partition_count_is_reported_by_name(fresh: Settings) -> None:
    ensure_topics(fresh.with_(partitions=2))
    expected = f"topic {fresh.events_topic} has 2 partitions; BLOBLEDGER_PARTITIONS={PARTITIONS}"

    projector = cli(fresh, "projector", "--idle-exit", "0.5")
    assert projector.returncode == 0, projector.stderr
    logged = [json.loads(x) for x in projector.stderr.splitlines() if x.startswith("{")]
    warnings = [e["event"] for e in logged if e.get("level") == "warning"]
    assert any(w.startswith(expected) and "BLOBLEDGER_PARTITIONS=2" in w for w in warnings), (
        projector.stderr
    )

    status = cli(fresh, "stack", "status")
    assert f"warning: {expected}" in status.stdout, status.stdout + status.stderr
    topics = json.loads(cli(fresh, "stack", "status", "--json").stdout)["topics"]
    assert topics[fresh.events_topic] == {"partitions": 2, "expected": PARTITIONS}
    # reported, never repartitioned
    assert partitions_of(fresh) == dict.fromkeys(topic_names(fresh), 2)


@contextlib.contextmanager
def broker_down(stack: RunningStack) -> Iterator[None]:
    stack.stop("kafka")
    try:
        yield
    finally:
        stack.start("kafka")


def test_a_projector_started_while_the_broker_is_down_waits_and_says_so(
    stack: RunningStack, fresh: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "projector.log"

    def logged(event: str) -> list[dict[str, object]]:
        lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
        return [e for e in lines if e.get("event") == event]

    proc: Proc | None = None
    try:
        with broker_down(stack):
            proc = Proc(fresh, ["projector"], str(log_path))
            wait_for(
                lambda: len(logged("waiting for the Kafka broker")) >= 2,
                timeout=60,
                what="the projector to say (twice) what it waits for",
            )
            assert proc.p.poll() is None, log_path.read_text()
            waits = logged("waiting for the Kafka broker")
            assert {e["broker"] for e in waits} == {fresh.bootstrap_servers}
        # it makes the topics itself and starts folding, without being restarted
        wait_for(lambda: bool(logged("projector started")), timeout=60, what="the projector")
        assert partitions_of(fresh) == all_made_by_us(fresh)
        with bootstrap.client(fresh, actor="tester") as client:
            result = client.create("topics/after-outage.txt", {"a": 1})
        assert result.outcome is not None and result.outcome.status == "accepted"
    finally:
        if proc is not None:
            proc.kill()
