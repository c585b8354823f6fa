"""``blobledger projector``: fold the events topic into the read model until stopped."""

from __future__ import annotations

import argparse
import signal
import threading

from blobledger.infra import bootstrap
from blobledger.infra import logging as blog
from blobledger.infra.settings import Settings

log = blog.get_logger(__name__)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobledger projector",
        description="Fold the events topic into the Postgres read model.",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="exit after this many seconds without new events",
    )
    args = parser.parse_args(argv)
    blog.configure(service="projector")
    settings = settings or Settings.from_env()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # metrics and traces from the start: the wait below shows as a process with no lag yet
    bootstrap.observe(settings, "projector")
    # waits (and says so) until the broker answers and the topics exist
    projector = bootstrap.projector(settings, stop=stop)
    log.info("projector started", topic=projector.topic, schema=settings.read_model_schema)
    try:
        totals = projector.run(stop, idle_exit=args.idle_exit)
    finally:
        projector.close()
    log.info(
        "projector stopped",
        applied=totals.applied,
        rejected=totals.rejected,
        dead_letters=totals.dead_letters,
    )
    return 0
