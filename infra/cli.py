"""The ``blobledger`` console script: it only dispatches.

Each subcommand's code lives in the package it drives and exposes ``main(argv) -> int``;
modules are imported lazily so ``blobledger stack status`` does not load boto3 and
friends. No path ends in a traceback: project errors and OS errors (a missing directory,
a full disk) become one line on stderr and exit status 1 (2 for usage, 130 on Ctrl-C,
141 when the reader of stdout went away, as for ``| head``); anything else is a bug,
reported as one "internal error" line whose traceback ``-v`` or ``BLOBLEDGER_DEBUG=1``
shows. With ``--json`` the error is also one JSON object on stdout.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import select
import sys
import traceback
from collections.abc import Callable, Sequence

from blobledger.schemas.errors import BlobledgerError

#: command -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": (
        "blobledger.infra.stack.cli:main",
        "start, stop or inspect the embedded stack (up|down|status)",
    ),
    "up": (
        "blobledger.infra.up_cli:up_main",
        "start the stack plus supervised projectors, workers and reaper",
    ),
    "down": ("blobledger.infra.up_cli:down_main", "stop what `up` started, then the stack"),
    "status": (
        "blobledger.infra.status_cli:main",
        "health, lag, uploads and dead letters; exit 0 healthy, 1 degraded, 2 down",
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
OBJECT_USAGE = "usage: blobledger object {create|update|tag|acl|delete|get|list|history|audit} ..."

#: commands that run briefly and print a result: their logs are warnings only (the
#: long-running ones, the stack and the demo configure their own logging)
BRIEF = {"object", "put", "get", "dlq", "key", "bench"}

VERBOSE = ("-v", "--verbose")
#: log lines as JSON objects even on a terminal (off a terminal they are JSON anyway)
LOG_JSON = "--log-json"
_TRUE = {"1", "true", "yes", "on"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: blobledger [-v] [--log-json] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run `blobledger <command> --help` for a command's options.",
        "-v (or BLOBLEDGER_DEBUG=1) shows the traceback of an internal error, and info logs.",
        "--log-json writes log lines as JSON on a terminal too (BLOBLEDGER_LOG_JSON=1).",
    ]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, func = target.split(":")
    return getattr(importlib.import_module(module_name), func)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while args and args[0] in (*VERBOSE, LOG_JSON):
        if args[0] == LOG_JSON:
            # read by infra.logging.configure in whichever process logs (children too)
            os.environ["BLOBLEDGER_LOG_JSON"] = "1"
        else:
            verbose = True
        args = args[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(
            f"blobledger: unknown command {command!r}; {hint}`blobledger --help` lists them",
            file=sys.stderr,
        )
        return 2
    target = COMMANDS[command][0]
    if command == "object":
        verb = rest[0] if rest else ""
        if verb in OBJECT_WRITES:
            target = "blobledger.producers.cli:main"
        elif verb in OBJECT_READS:
            target = "blobledger.producers.query_cli:main"
        elif verb in ("-h", "--help"):
            print(OBJECT_USAGE)
            return 0
        else:
            print(OBJECT_USAGE, file=sys.stderr)
            return 2
    return _run(command, target, rest, verbose=verbose)


def _run(command: str, target: str, rest: list[str], *, verbose: bool) -> int:
    """Run a subcommand; every way it can fail ends here as one line and an exit status."""
    debug = verbose or os.environ.get("BLOBLEDGER_DEBUG", "").strip().lower() in _TRUE
    as_json = "--json" in rest
    try:
        if command in BRIEF:
            _quiet_logs(verbose)
        status = int(_resolve(target)(rest) or 0)
        sys.stdout.flush()  # here, so a closed pipe is handled below and not at exit
        return status
    except BlobledgerError as e:
        return _fail(command, e.code, str(e), as_json=as_json, debug=debug)
    except KeyboardInterrupt:
        return _fail(
            command, "interrupted", "interrupted", as_json=as_json, debug=debug, status=130
        )
    except BrokenPipeError as e:
        if _stdout_gone():  # `| head` stopped reading: nothing to say, nobody to say it to
            _silence_stdout()
            return 141
        return _fail(command, "io", _os_message(e), as_json=as_json, debug=debug)
    except OSError as e:  # the environment, not a bug: a missing directory, a full disk
        return _fail(command, "io", _os_message(e), as_json=as_json, debug=debug)
    except Exception as e:
        message = f"internal error: {type(e).__name__}: {e}"
        if not debug:
            message += " (run with -v / BLOBLEDGER_DEBUG=1 for the traceback)"
        return _fail(command, "internal", message, as_json=as_json, debug=debug)


def _quiet_logs(verbose: bool) -> None:
    """Warnings only (info with -v) unless BLOBLEDGER_LOG_LEVEL says otherwise, on stderr:
    stdout carries the result. Unconfigured, structlog would print to stdout."""
    from blobledger.infra import logging as blog

    blog.configure(os.environ.get("BLOBLEDGER_LOG_LEVEL") or ("INFO" if verbose else "WARNING"))


def _fail(
    command: str, code: str, message: str, *, as_json: bool, debug: bool, status: int = 1
) -> int:
    if debug:
        traceback.print_exc()
    if as_json:
        try:
            print(json.dumps({"error": code, "message": message}), flush=True)
        except OSError:
            _silence_stdout()
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"blobledger {command}: {one_line}", file=sys.stderr)
    return status


def _os_message(e: OSError) -> str:
    """``No such file or directory: 'out/x.bin'`` rather than ``[Errno 2] ...``."""
    if e.strerror and e.filename is not None:
        names = repr(os.fsdecode(e.filename))
        if e.filename2 is not None:
            names += f" -> {os.fsdecode(e.filename2)!r}"
        return f"{e.strerror}: {names}"
    return e.strerror or str(e) or type(e).__name__


def _stdout_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (its write end reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True  # no usable stdout left to ask


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit does not fail a second time
    ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
