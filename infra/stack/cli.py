"""``blobledger stack up|down|status [--json]``: the embedded stack from a shell.

With the broker up, ``up`` also creates the project's topics with the configured partitions
(before any process needs them), and both ``up`` and ``status`` list them, naming a topic
whose partition count differs from ``BLOBLEDGER_PARTITIONS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from blobledger.infra.logging import configure as configure_logging
from blobledger.infra.settings import Settings
from blobledger.infra.stack.base import ServiceStatus
from blobledger.infra.stack.launcher import Stack
from blobledger.schemas.errors import BlobledgerError

if TYPE_CHECKING:
    from blobledger.infra.topics import TopicState


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blobledger stack",
        description="Run the embedded PostgreSQL, S3 (SeaweedFS) and Kafka (Tansu) services; "
        "the broker's log has its own SeaweedFS (log-store). "
        "Data and logs live in BLOBLEDGER_DATA_DIR (default ./.blobledger).",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "services", nargs="*", help="postgres, s3, log-store, kafka (default: all embedded)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait per service")
    return p


def _topics(
    settings: Settings, statuses: list[ServiceStatus], *, create: bool
) -> list[TopicState] | None:
    """The project's topics as the broker lists them (None while it is down); ``create``
    makes the missing ones first."""
    if not any(s.name == "kafka" and s.healthy for s in statuses):
        return None
    from blobledger.infra.topics import cluster_metadata, ensure_topics, topic_states

    if create:
        ensure_topics(settings)
    return topic_states(settings, cluster_metadata(settings))


def _print(
    statuses: list[ServiceStatus],
    settings: Settings,
    as_json: bool,
    topics: list[TopicState] | None = None,
) -> None:
    warnings = [t.warning() for t in topics or () if t.mismatched]
    if as_json:
        print(
            json.dumps(
                {
                    "data_dir": str(settings.data_dir.absolute()),
                    "healthy": all(s.healthy for s in statuses),
                    "services": {s.name: s.as_dict() for s in statuses},
                    "topics": None
                    if topics is None
                    else {
                        t.name: {"partitions": t.partitions, "expected": t.expected} for t in topics
                    },
                    "warnings": warnings,
                }
            )
        )
        return
    print(f"data dir: {settings.data_dir.absolute()}")
    print(f"{'service':<9} {'health':<8} {'pid':>7}  endpoint")
    for s in statuses:
        health = "healthy" if s.healthy else "DOWN"
        pid = str(s.pid) if s.pid else ("extern" if not s.embedded else "-")
        print(f"{s.name:<9} {health:<8} {pid:>7}  {s.endpoint}")
    if topics:
        width = max(len(t.name) for t in topics)
        print(f"\n{'topic':<{width}}  partitions (BLOBLEDGER_PARTITIONS={settings.partitions})")
        for t in topics:
            shown = "missing (`blobledger stack up` creates it)" if not t.exists else t.partitions
            print(f"{t.name:<{width}}  {shown}{'  MISMATCH' if t.mismatched else ''}")
    for w in warnings:
        print(f"warning: {w}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()  # to stderr: stdout carries the table / JSON
    try:
        settings = Settings.from_env()
        stack = Stack(settings, timeout=args.timeout)
        if args.action == "up":
            from blobledger.infra.keys import ensure_local_keys

            # the first `up` issues the operator's and the system processes' keys (0600)
            ensure_local_keys(settings)
            statuses = stack.up(args.services or None)
            # topics exist before any process needs them, with the configured partitions
            _print(statuses, settings, args.json, _topics(settings, statuses, create=True))
            return 0
        if args.action == "down":
            stack.down(args.services or None)
            if args.json:
                print(json.dumps({"stopped": True}))
            return 0
        statuses = stack.status()
        _print(statuses, settings, args.json, _topics(settings, statuses, create=False))
        return 0 if all(s.healthy for s in statuses) else 3
    except BlobledgerError as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "error": str(e),
                        "code": e.code,
                        "service": getattr(e, "service", None),
                        "log_file": getattr(e, "log_file", None),
                    }
                )
            )
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
