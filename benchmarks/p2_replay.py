"""P2: full replay/rebuild of N events (``blobledger replay``'s code path) in events/s.

The log is filled first (untimed); the replay then rebuilds a fresh schema from offset 0
and swaps it in. The DESIGN target is >= 20k events/s for 1M events
(``blobledger bench P2 --replay-events 1000000``); baseline = that rate.
"""

from __future__ import annotations

import argparse
from typing import Any

from blobledger.benchmarks.common import BenchContext, fill_events, result

TARGET_RATE = 20_000.0


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    from blobledger.projectors.rebuild import replay

    s = ctx.fresh("p2")
    n = args.replay_events
    fill_events(s, n, seed=11)
    report = replay(s, progress=False, swap=True)
    row = result(
        "P2",
        f"full replay/rebuild of {report.events} events",
        report.events_per_second,
        TARGET_RATE,
        "target rate 20000 events/s",
        "events/s",
        ">= 1.0",
        extra={
            "events": report.events,
            "replay_seconds": report.seconds,
            "abs_target": ">= 20000 events/s",
            "broker_storage": ctx.broker_storage,
            "stack": ctx.stack,
        },
    )
    ctx.drop(s)
    return row
