"""``blobledger stack up|down|status [--json]``: the embedded stack from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from blobledger.infra.logging import configure as configure_logging
from blobledger.infra.settings import Settings
from blobledger.infra.stack.base import ServiceStatus
from blobledger.infra.stack.launcher import Stack
from blobledger.schemas.errors import BlobledgerError


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


def _print(statuses: list[ServiceStatus], settings: Settings, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "data_dir": str(settings.data_dir.absolute()),
                    "healthy": all(s.healthy for s in statuses),
                    "services": {s.name: s.as_dict() for s in statuses},
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
            _print(stack.up(args.services or None), settings, args.json)
            return 0
        if args.action == "down":
            stack.down(args.services or None)
            if args.json:
                print(json.dumps({"stopped": True}))
            return 0
        statuses = stack.status()
        _print(statuses, settings, args.json)
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
