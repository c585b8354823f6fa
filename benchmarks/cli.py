"""``blobledger bench [ID ...] [--json]``: run benchmarks side by side and print ratios.

Output contract (DESIGN.md, "Benchmark output contract"): one JSON object per line with
``id, what, ours, baseline, baseline_name, ratio, unit, target, met`` plus extra fields,
or a readable table without ``--json``. Benchmarks run on the configured stack; the
embedded one is started when needed (in ``<data_dir>/bench``, on free ports when the
default ones are taken) and stopped again afterwards unless ``--keep-stack``.

Adding a benchmark is one line in :data:`REGISTRY`: ``id -> "module:function"``, where
the function takes ``(ctx: BenchContext, args: argparse.Namespace)`` and returns one
result dict (or a list of them) built with :func:`benchmarks.common.result`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from blobledger.benchmarks.common import (
    format_table,
    not_available,
    open_context,
    result,
)

#: id -> "module:function" (the blob benchmarks P3/P4/P6 live with the blob path's owner)
REGISTRY: dict[str, str] = {
    "P1": "blobledger.benchmarks.p1_projector:run",
    "P2": "blobledger.benchmarks.p2_replay:run",
    "P3": "blobledger.benchmarks.p3_upload:run",
    "P4": "blobledger.benchmarks.p4_lookup:run",
    "P5": "blobledger.benchmarks.p5_latency:run",
    "P6": "blobledger.benchmarks.p6_dedup:run",
}


def resolve(target: str) -> Callable[..., Any] | None:
    """The benchmark function, or None when its module is not there (yet)."""
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            return None
        raise
    return getattr(module, func, None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blobledger bench",
        description="Run benchmarks (all when no id is given) and print ours vs baseline ratios.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help=f"benchmark ids: {', '.join(REGISTRY)}")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="P1: events on the topic for the projector and the floor (default 200000)",
    )
    p.add_argument(
        "--projectors",
        type=int,
        default=None,
        help="P1: projector processes in one consumer group (default: os.cpu_count())",
    )
    p.add_argument(
        "--replay-events",
        type=int,
        default=200_000,
        help="P2: events to replay (default 200000; the target is stated for "
        "--replay-events 1000000)",
    )
    p.add_argument(
        "--rate", type=float, default=1000.0, help="P5: commands per second (default 1000)"
    )
    p.add_argument(
        "--seconds", type=float, default=15.0, help="P5: seconds of load per side (default 15)"
    )
    p.add_argument(
        "--blob-mib", type=int, default=1024, help="P3/P4/P6: blob size in MiB (default 1024)"
    )
    p.add_argument(
        "--fold-rounds",
        type=int,
        default=None,
        help="P1: alternating floor/ours rounds, medians compared (default 3)",
    )
    p.add_argument(
        "--latency-rounds",
        type=int,
        default=None,
        help="P5: alternating raw/ours windows, --seconds split between them (default 3)",
    )
    p.add_argument(
        "--blob-rounds",
        type=int,
        default=None,
        help="P3/P4/P6: interleaved rounds per side (default 5 for P3, 3 for P4/P6)",
    )
    p.add_argument(
        "--lookup-rate", type=float, default=None, help="P4: point lookups per second (default 200)"
    )
    p.add_argument(
        "--keep-stack", action="store_true", help="leave an embedded stack we started running"
    )
    p.add_argument(
        "--broker-storage",
        choices=("s3", "memory"),
        default=None,
        help="broker storage of an embedded stack we start (default: the settings', s3)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ids = [i.upper() for i in args.ids] or list(REGISTRY)
    unknown = [i for i in ids if i not in REGISTRY]
    if unknown:
        print(
            f"blobledger bench: unknown benchmark(s) {', '.join(unknown)}; "
            f"known: {', '.join(REGISTRY)}",
            file=sys.stderr,
        )
        return 2
    runnable = {i: resolve(REGISTRY[i]) for i in ids}
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"[{row['id']}] done: {row.get('ratio')} (target {row.get('target')})",
                file=sys.stderr,
            )

    for i in ids:
        if runnable[i] is None:
            emit(not_available(i, REGISTRY[i]))
    todo = [(i, run) for i in ids if (run := runnable[i]) is not None]
    failed = False
    if todo:
        with open_context(broker_storage=args.broker_storage, keep=args.keep_stack) as ctx:
            for i, run in todo:
                t0 = time.monotonic()
                try:
                    out = run(ctx, args)
                except Exception as e:  # one broken benchmark must not hide the others
                    failed = True
                    traceback.print_exc(file=sys.stderr)
                    emit(
                        result(
                            i,
                            "error",
                            None,
                            None,
                            "",
                            "",
                            REGISTRY[i],
                            extra={"error": f"{type(e).__name__}: {e}"},
                        )
                    )
                    continue
                for row in out if isinstance(out, list) else [out]:
                    row.setdefault("seconds", round(time.monotonic() - t0, 1))
                    emit(row)
    if not args.json:
        print(format_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
