"""How far the read model is behind the log: high watermarks minus checkpoints."""

from __future__ import annotations

import time

import psycopg

from blobledger.infra.kafka import end_offsets
from blobledger.infra.postgres import connect, translated
from blobledger.infra.settings import Settings
from blobledger.projectors.readmodel import ReadModel
from blobledger.schemas.errors import TimeoutExpired


def high_watermarks(settings: Settings, topic: str | None = None) -> dict[int, int]:
    return end_offsets(settings, topic or settings.events_topic)


def projection_lag(settings: Settings, *, schema: str | None = None) -> int:
    """Events in the log that the read model has not folded yet."""
    highs = high_watermarks(settings)
    with connect(settings, autocommit=True) as conn:
        done = _checkpoints(ReadModel(conn, schema or settings.read_model_schema), settings)
    return sum(max(0, high - done.get(p, 0)) for p, high in highs.items())


def _checkpoints(model: ReadModel, settings: Settings) -> dict[int, int]:
    """Checkpoints, or none when no projector has created the read model yet."""
    with translated():
        try:
            return model.checkpoints(settings.events_topic)
        except psycopg.errors.UndefinedTable:
            return {}


def wait_caught_up(settings: Settings, timeout: float = 60.0, *, schema: str | None = None) -> None:
    """Block until the read model has folded everything in the log right now."""
    deadline = time.monotonic() + timeout
    highs = high_watermarks(settings)
    with connect(settings, autocommit=True) as conn:
        model = ReadModel(conn, schema or settings.read_model_schema)
        while True:
            done = _checkpoints(model, settings)
            behind = sum(max(0, h - done.get(p, 0)) for p, h in highs.items())
            if behind == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutExpired(
                    f"read model still {behind} events behind after {timeout:.0f}s; "
                    "is a projector running?"
                )
            time.sleep(0.05)
