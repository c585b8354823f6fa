"""Fixtures shared by the integration and e2e tiers (the services come from the
blobledger pytest plugin: ``stack`` and ``settings``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from blobledger.infra.settings import Settings
from blobledger.infra.testing.services import ThreadedProjector


@pytest.fixture
def projector(settings: Settings) -> Iterator[ThreadedProjector]:
    """A projector folding the test's events topic in a background thread."""
    p = ThreadedProjector(settings)
    yield p
    p.stop()
