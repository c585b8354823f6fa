"""The ``blobledger replay`` and ``blobledger recover`` commands (see projectors/rebuild.py).

``replay`` rebuilds the read model next to the live one and swaps it in (optionally
verifying the two are equal); ``recover`` rebuilds a read model whose database or schema
is gone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from blobledger.infra import logging as blog
from blobledger.infra.progress import (
    ProgressDisplay,
    add_progress_argument,
    open_display,
    progress_mode,
)
from blobledger.infra.settings import Settings
from blobledger.infra.topics import require_broker
from blobledger.projectors.rebuild import ReplayReport, ensure_database, replay


def _print(report: ReplayReport, as_json: bool, what: str) -> None:
    out = asdict(report)
    out["events_per_second"] = round(report.events_per_second, 1)
    if as_json:
        print(json.dumps(out))
        return
    print(
        f"{what}: folded {report.events} events in {report.seconds:.1f}s "
        f"({report.events_per_second:,.0f} events/s); swapped={report.swapped}"
    )
    if report.dead_letters:
        print(
            f"  {report.dead_letters} message(s) could not be folded: dead letters, "
            f"{report.dead_letters_sent} of them newly sent to the DLQ (`blobledger dlq list`)"
        )
    if report.verified is not None:
        print(
            "  verify: rebuilt read model equals the live one"
            if report.verified
            else "  verify: DIFFERENCES between the live and the rebuilt read model:"
        )
        for table, sides in report.differences.items():
            for side, keys in sides.items():
                if keys:
                    print(f"    {table} {side}: {', '.join(keys)}")


def _display(label: str, args: argparse.Namespace) -> ProgressDisplay:
    """Events folded against the log's end offsets, on stderr (``--progress``)."""
    return open_display(label, "events", progress_mode(args.progress, as_json=args.json))


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger replay",
        description="Rebuild the read model from the log into a fresh schema and swap it in.",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare rebuilt and live models by digest; list differences",
    )
    p.add_argument(
        "--no-swap",
        action="store_true",
        help="rebuild (and verify) without replacing the live model",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes folding partitions in parallel (default: one per core)",
    )
    p.add_argument("--json", action="store_true")
    add_progress_argument(p)
    args = p.parse_args(argv)
    blog.configure()
    settings = settings or Settings.from_env()
    require_broker(settings)  # a broker that does not answer: one line within seconds
    report = replay(
        settings,
        verify=args.verify,
        swap=not args.no_swap,
        progress=_display("replay", args),
        workers=args.workers,
    )
    _print(report, args.json, "replay")
    return 0 if report.verified in (None, True) else 3


def recover_main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger recover",
        description="Rebuild a lost read model (dropped database or schema) from the log.",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes folding partitions in parallel (default: one per core)",
    )
    p.add_argument("--json", action="store_true")
    add_progress_argument(p)
    args = p.parse_args(argv)
    blog.configure()
    settings = settings or Settings.from_env()
    require_broker(settings)
    created = ensure_database(settings)
    report = replay(settings, progress=_display("recover", args), workers=args.workers)
    if not args.json and created:
        print("recreated the read-model database")
    _print(report, args.json, "recover")
    return 0
