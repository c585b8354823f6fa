"""The ``blobledger`` console script: it only dispatches.

Each subcommand's code lives in the package it drives and exposes ``main(argv) -> int``;
modules are imported lazily so ``blobledger stack status`` does not load boto3 and
friends. Project errors become one clear line on stderr and exit status 1 (2 for usage).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence

from blobledger.schemas.errors import BlobledgerError

#: command -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": (
        "blobledger.infra.stack.cli:main",
        "start, stop or inspect the embedded stack (up|down|status)",
    ),
    "demo": ("blobledger.infra.demo:main", "run the end-to-end demo on the embedded stack"),
    "object": ("", "create|update|tag|acl|delete|get|list|history|audit objects"),
    "put": (
        "blobledger.producers.blob_cli:put_main",
        "attach a file or URL to an object and follow the upload",
    ),
    "get": (
        "blobledger.producers.blob_cli:get_main",
        "stream an object's blob to a file or stdout, verifying it",
    ),
    "projector": (
        "blobledger.projectors.cli:main",
        "fold the events topic into the Postgres read model",
    ),
    "worker": ("blobledger.blob_worker.runner:main", "run a blob worker (upload commands -> S3)"),
    "reaper": (
        "blobledger.blob_worker.reaper:main",
        "compensate uploads past their deadline, abort stale multipart uploads",
    ),
    "replay": (
        "blobledger.projectors.replay:main",
        "rebuild the read model from the log and swap it in",
    ),
    "recover": (
        "blobledger.projectors.replay:recover_main",
        "rebuild a lost read model from the log",
    ),
    "dlq": ("blobledger.infra.dlq:main", "list or retry dead letters"),
    "key": ("blobledger.infra.keys_cli:main", "issue, list or retire publishing keys"),
    "bench": ("blobledger.benchmarks.cli:main", "run the benchmarks (P1..P6) and print ratios"),
}

OBJECT_WRITES = {"create", "update", "tag", "acl", "delete"}
OBJECT_READS = {"get", "list", "history", "audit"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: blobledger <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `blobledger <command> --help` for a command's options."]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, func = target.split(":")
    return getattr(importlib.import_module(module_name), func)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"blobledger: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[command][0]
    if command == "object":
        verb = rest[0] if rest else ""
        if verb in OBJECT_WRITES:
            target = "blobledger.producers.cli:main"
        elif verb in OBJECT_READS:
            target = "blobledger.producers.query_cli:main"
        else:
            print(
                "usage: blobledger object "
                "{create|update|tag|acl|delete|get|list|history|audit} ...",
                file=sys.stderr,
            )
            return 2
    try:
        return int(_resolve(target)(rest) or 0)
    except BlobledgerError as e:
        if "--json" in rest:
            print(json.dumps({"error": e.code, "message": str(e)}))
        print(f"blobledger {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"blobledger {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
