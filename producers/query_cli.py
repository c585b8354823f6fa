"""``blobledger object get|list|history|audit``: queries from a shell (``--json`` for scripts)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime

from blobledger.infra import bootstrap
from blobledger.infra.settings import Settings


def _when(text: str) -> datetime:
    """An ISO-8601 time; one without an offset is UTC (the read model's clock)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes an ISO-8601 time, e.g. 2026-11-26T10:00:00+00:00, not {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number of at least 1, not {text!r}")
    return n


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="blobledger object", description="Query objects.")
    sub = top.add_subparsers(dest="verb", required=True)
    g = sub.add_parser("get", help="an object's current state (or as of a version/time)")
    g.add_argument("object", help="object key or id")
    g.add_argument("--version", type=int, default=None)
    g.add_argument("--at", type=_when, default=None, help="state as of this time (ISO 8601)")
    ls = sub.add_parser("list", help="objects by key prefix and/or tag, a page at a time")
    ls.add_argument("--prefix", default="")
    ls.add_argument("--tag", default=None)
    ls.add_argument("--limit", type=_count, default=100, help="at most 1000")
    ls.add_argument("--cursor", default=None, help="next_cursor from the previous page")
    h = sub.add_parser("history", help="every accepted version of an object")
    h.add_argument("object")
    a = sub.add_parser(
        "audit",
        help="everything an actor did, accepted and rejected (another actor's: only on "
        "objects you administer)",
    )
    a.add_argument("who", nargs="?", default=None, help="actor to audit (default: yourself)")
    a.add_argument("--since", type=_when, default=None)
    a.add_argument("--limit", type=_count, default=1000)
    for p in (g, ls, h, a):
        p.add_argument(
            "--actor", default=os.environ.get("BLOBLEDGER_ACTOR", os.environ.get("USER", "cli"))
        )
        p.add_argument("--tenant", default=None)
        p.add_argument("--json", action="store_true")
    return top


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    args = parser().parse_args(argv)
    with bootstrap.client(
        settings or Settings.from_env(), actor=args.actor, tenant=args.tenant
    ) as client:
        if args.verb == "get":
            if args.version is not None or args.at is not None:
                entry = client.as_of(args.object, version=args.version, at=args.at)
                data = entry.to_json()
            else:
                data = client.get(args.object).to_json()
            print(json.dumps(data, indent=None if args.json else 2, default=str))
        elif args.verb == "list":
            page = client.list_objects(
                prefix=args.prefix, tag=args.tag, cursor=args.cursor, limit=args.limit
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            "items": [o.to_json() for o in page.items],
                            "next_cursor": page.next_cursor,
                        }
                    )
                )
            else:
                for o in page.items:
                    blob = f"{o.blob.size}B {o.blob.sha256[:12]}" if o.blob else "-"
                    pending = " (upload pending)" if o.pending_upload_id else ""
                    print(f"{o.key:<40} v{o.version:<4} {blob}{pending}  tags={','.join(o.tags)}")
                if page.next_cursor:
                    print(f"-- more: --cursor {page.next_cursor}")
        elif args.verb == "history":
            entries = client.history(args.object)
            if args.json:
                print(json.dumps([e.to_json() for e in entries]))
            else:
                for e in entries:
                    print(
                        f"v{e.version:<4} {e.occurred_at.isoformat()}  {e.event_type:<16} "
                        f"by {e.actor}"
                    )
        else:
            audit = client.audit(args.who, since=args.since, limit=args.limit)
            if args.json:
                print(json.dumps([a.to_json() for a in audit]))
            else:
                for a in audit:
                    why = f" ({a.reason})" if a.reason else ""
                    print(
                        f"{a.occurred_at.isoformat()}  {a.event_type:<16} {a.object_id} "
                        f"{a.status}{why}"
                    )
    return 0
