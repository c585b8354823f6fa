"""``blobledger object create|update|tag|acl|delete``: the write side from a shell.

Waits for the outcome by default (``--no-wait`` returns the receipt only); ``--json``
prints one JSON object for scripts. Metadata is given as JSON (``--meta '{"a": 1}'``)
or as repeated ``--set key=value`` pairs (values parsed as JSON when they parse).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from blobledger.infra import bootstrap
from blobledger.infra.settings import Settings
from blobledger.producers.client import Result
from blobledger.schemas.errors import ValidationError


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: deeper than the parser goes
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise ValidationError(f"not valid JSON: {shown!r} ({e})") from e


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """--meta (a JSON object) merged with the --set pairs."""
    meta = args.meta if args.meta is not None else {}
    if not isinstance(meta, dict):
        raise ValidationError(
            f"--meta must be a JSON object like '{{\"a\": 1}}', not {type(meta).__name__}"
        )
    return {**meta, **_pairs(args.set)}


def _pairs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ValidationError(f"--set takes key=value, got {p!r}")
        k, raw = p.split("=", 1)
        try:
            out[k] = json.loads(raw)
        except (ValueError, RecursionError):
            out[k] = raw  # the client refuses it if it is no storable text either
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor",
        default=os.environ.get("BLOBLEDGER_ACTOR", os.environ.get("USER", "cli")),
        help="who acts (default: $BLOBLEDGER_ACTOR or $USER)",
    )
    p.add_argument("--tenant", default=None)
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return once the broker acknowledged; do not wait for the projection",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _versioned(p: argparse.ArgumentParser) -> None:
    p.add_argument("object", help="object key or id")
    p.add_argument(
        "--expected-version",
        "-e",
        type=int,
        default=None,
        help="refuse (conflict) unless the object is at this version",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="blobledger object", description="Change objects.")
    sub = top.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("create", help="create an object")
    c.add_argument("key")
    c.add_argument("--meta", type=_json_arg, default=None, help="metadata as a JSON object")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--tag", action="append", default=[])
    c.add_argument("--content-type", default=None)
    u = sub.add_parser("update", help="merge-patch the metadata (null removes a key)")
    _versioned(u)
    u.add_argument("--meta", type=_json_arg, default=None)
    u.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t = sub.add_parser("tag", help="add or remove tags")
    _versioned(t)
    t.add_argument("--add", action="append", default=[])
    t.add_argument("--remove", action="append", default=[])
    a = sub.add_parser("acl", help="set what a principal may do (read, write, admin); none revokes")
    _versioned(a)
    a.add_argument("principal", help="user/service name, or * for everyone")
    a.add_argument("permissions", nargs="*")
    d = sub.add_parser("delete", help="soft-delete an object")
    _versioned(d)
    d.add_argument("--reason", default=None)
    for p in (c, u, t, a, d):
        _common(p)
    return top


def _report(result: Result, args: argparse.Namespace) -> None:
    out = {
        "event_id": result.event_id,
        "object_id": result.object_id,
        "partition": result.receipt.partition,
        "offset": result.receipt.offset,
        "status": result.outcome.status if result.outcome else "published",
        "version": result.version,
    }
    if args.json:
        print(json.dumps(out))
    elif result.outcome:
        name = args.key if args.verb == "create" else args.object  # as the user typed it
        print(f"{args.verb}: {out['status']} — object {name!r} now at version {result.version}")
    else:
        print(
            f"{args.verb}: published event {result.event_id} at partition {out['partition']} "
            f"offset {out['offset']} (not waiting for the projection)"
        )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    args = parser().parse_args(argv)
    with bootstrap.client(
        settings or Settings.from_env(), actor=args.actor, tenant=args.tenant
    ) as client:
        if args.verb == "create":
            result = client.create(
                args.key,
                _document(args),
                tags=args.tag,
                content_type=args.content_type,
                wait=args.wait,
            )
        elif args.verb == "update":
            patch = _document(args)
            if not patch:
                raise ValidationError("update needs --meta or --set")
            result = client.update(
                args.object, patch, expected_version=args.expected_version, wait=args.wait
            )
        elif args.verb == "tag":
            result = client.tag(
                args.object,
                add=args.add,
                remove=args.remove,
                expected_version=args.expected_version,
                wait=args.wait,
            )
        elif args.verb == "acl":
            result = client.set_acl(
                args.object,
                args.principal,
                args.permissions,
                expected_version=args.expected_version,
                wait=args.wait,
            )
        else:
            result = client.delete(
                args.object,
                expected_version=args.expected_version,
                reason=args.reason,
                wait=args.wait,
            )
        _report(result, args)
    return 0
