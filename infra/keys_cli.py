"""``blobledger key create|list|retire``: issue, inspect and rotate publishing keys.

Rotation: ``key create`` a new key for the same principal, switch its holder to the new
file (``BLOBLEDGER_KEY_FILE``), then ``key retire`` the old id. Events signed before the
retirement keep verifying (a replay gives the same outcomes); later ones are rejected.
Projectors and workers pick new keys up without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from blobledger.infra import keys
from blobledger.infra.settings import Settings
from blobledger.schemas.auth import KEY_KINDS, Key, KeyKind
from blobledger.schemas.events import us_to_datetime


def _describe(key: Key) -> dict[str, object]:
    return {
        "key_id": key.key_id,
        "principal": key.principal,
        "kind": key.kind,
        "acts_for": sorted(key.acts_for),
        "retired_at": us_to_datetime(key.retired_at).isoformat() if key.retired_at else None,
    }


def _file_name(text: str) -> str:
    """A key file's name: a plain name in the keys dir, never a path out of it."""
    if not text or text.startswith(".") or any(sep in text for sep in ("/", "\\", os.sep)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain file name (no '/', no leading '.'); the file is written "
            "to the keys dir"
        )
    return text


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="blobledger key", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("create", help="issue a key for a principal; writes its key file")
    c.add_argument("principal", help="who the key acts as (system:... for a system key)")
    c.add_argument(
        "--kind",
        choices=KEY_KINDS,
        default=None,
        help="default: user (system for system: principals, service with --acts-for)",
    )
    c.add_argument("--acts-for", default="", help="service keys: comma-separated users, or *")
    c.add_argument(
        "--name",
        type=_file_name,
        default=None,
        help="key file name in the keys dir (default: the principal, with ':' replaced)",
    )
    ls = sub.add_parser("list", help="every key in the keyring (never the secrets)")
    r = sub.add_parser("retire", help="stop a key from signing new events")
    r.add_argument("key_id")
    for p in (c, ls, r):
        p.add_argument("--json", action="store_true")
    return top


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    s = settings or Settings.from_env()
    keys.ensure_local_keys(s)
    if args.verb == "create":
        acts_for = [a.strip() for a in args.acts_for.split(",") if a.strip()]
        kind: KeyKind = args.kind or (
            "system" if args.principal.startswith("system:") else "service" if acts_for else "user"
        )
        key = keys.new_key(args.principal, kind, acts_for)
        name = args.name or args.principal.replace(":", "-").replace("/", "-")
        keys.add_keys(s.keys_path, [(name, key)])
        path: Path = s.keys_path / f"{name}.json"
        out = {**_describe(key), "key_file": str(path)}
        print(
            json.dumps(out)
            if args.json
            else f"key {key.key_id} ({kind}) for {key.principal!r} written to {path} (mode 0600);\n"
            f"hand it to its holder, who sets BLOBLEDGER_KEY_FILE={path}"
        )
    elif args.verb == "list":
        ring = keys.load_keyring(s.keyring_path)
        rows = [_describe(k) for k in ring.keys.values()]
        if args.json:
            print(json.dumps(rows))
        for row in [] if args.json else rows:
            acts = f" acts for {','.join(row['acts_for'])}" if row["acts_for"] else ""  # type: ignore[arg-type]
            retired = f" retired {row['retired_at']}" if row["retired_at"] else ""
            print(f"{row['key_id']}  {row['kind']:<7} {row['principal']}{acts}{retired}")
    else:
        key = keys.retire_key(s.keys_path, args.key_id)
        print(
            json.dumps(_describe(key))
            if args.json
            else f"key {key.key_id} of {key.principal!r} retired: events it signs from now on "
            "are rejected; earlier ones still verify"
        )
    return 0
