"""Options of the chaos suite and the summary it leaves in pytest's report.

``--chaos-seconds=N`` (or ``BLOBLEDGER_CHAOS_SECONDS``) sets how long the load and the
faults last (default: the short run CI does); ``--chaos-seed=N`` (or
``BLOBLEDGER_CHAOS_SEED``) replays a run's plan of faults and commands.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the short run: with stack start, drain and checks, about two minutes on 2 cores
DEFAULT_SECONDS = 45.0
#: beyond the load: the drain waits up to the upload deadline plus the reaper and fold
OVERHEAD_SECONDS = 600
SUMMARIES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "blobledger chaos run (tests/chaos)")
    group.addoption(
        "--chaos-seconds",
        type=float,
        default=None,
        help=f"seconds of load and faults (env BLOBLEDGER_CHAOS_SECONDS; {DEFAULT_SECONDS:g})",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed of the fault plan and the load (env BLOBLEDGER_CHAOS_SEED; default random)",
    )


@dataclass(frozen=True)
class ChaosOptions:
    seconds: float
    seed: int


def chaos_options(config: pytest.Config) -> ChaosOptions:
    """From the command line, else the environment, else the defaults. The options are
    looked up leniently: this conftest is not an initial one when pytest runs from the
    repository root, so they may not be registered."""
    seconds = config.getoption("chaos_seconds", default=None) or float(
        os.environ.get("BLOBLEDGER_CHAOS_SECONDS") or DEFAULT_SECONDS
    )
    seed = config.getoption("chaos_seed", default=None)
    if seed is None:
        env = os.environ.get("BLOBLEDGER_CHAOS_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(10**6)
    return ChaosOptions(float(seconds), int(seed))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SUMMARIES] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A timeout that grows with the load (pyproject's 300 s fits the short run only)."""
    seconds = chaos_options(config).seconds
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(int(seconds) + OVERHEAD_SECONDS))


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> ChaosOptions:
    return chaos_options(request.config)


@pytest.fixture
def chaos_summaries(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the end of pytest's report (shown without ``-s``)."""
    return request.config.stash.setdefault(SUMMARIES, [])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    lines = config.stash.get(SUMMARIES, [])
    if lines:
        terminalreporter.section("blobledger chaos")
        for line in lines:
            terminalreporter.write_line(line)
