"""The parallel phase of a rebuild: partitions dealt to worker processes, each a Rebuilder.

Partitions own disjoint objects (the message key is the object id) and checkpoints are
per partition, so workers fold into one schema without meeting, except in the ``blobs``
table: partitions can share a blob. Workers therefore defer their blob rows and send them
back; the parent merges them and writes them once.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from blobledger.infra import logging as blog
from blobledger.infra.limits import RecordLimits
from blobledger.infra.postgres import connect, translated
from blobledger.infra.settings import Settings
from blobledger.projectors.readmodel import ReadModel
from blobledger.projectors.rebuilder import Rebuilder
from blobledger.projectors.rows import BlobRow, merge_blob_rows
from blobledger.schemas.errors import StackError


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What a worker sends back: its counts and deferred blob rows, or why it failed."""

    slot: int
    events: int = 0
    dead_letters: int = 0
    #: of ``dead_letters``, those this worker sent (the others were in the DLQ already)
    dead_letters_sent: int = 0
    blob_rows: dict[str, BlobRow] = field(default_factory=dict)
    #: the exception and its traceback, as text (None: the worker succeeded)
    error: str | None = None


class FoldTotals(NamedTuple):
    """What all workers folded together."""

    events: int
    dead_letters: int
    dead_letters_sent: int


def _worker(
    settings: Settings,
    target: str,
    partitions: list[int],
    targets: dict[int, int],
    progress: Any,
    slot: int,
    results: Any,
    limits: RecordLimits,
) -> None:
    """A process of a parallel rebuild: folds its partitions up to ``targets`` into
    ``target`` (disjoint partitions hold disjoint objects), deferring blob rows, and sends
    back what the parent needs: counts and the blob rows to write once."""
    try:
        blog.configure()
        r = Rebuilder(settings, target, partitions=partitions, defer_blobs=True, limits=limits)
        try:
            r.start()

            def tick(done: int) -> None:
                progress[slot] = done

            r.fold_until({p: targets[p] for p in partitions}, tick)
            progress[slot] = r.events
            results.put(WorkerResult(slot, r.events, r.dead, r.dead_sent, r.model.blob_rows))
        finally:
            r.close()
    except BaseException as e:
        results.put(WorkerResult(slot, error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def deal_partitions(partitions: dict[int, int], n: int) -> list[list[int]]:
    """Partitions (with their event counts) dealt into ``n`` shares of similar size."""
    shares: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for p, count in sorted(partitions.items(), key=lambda x: (-x[1], x[0])):
        i = load.index(min(load))
        shares[i].append(p)
        load[i] += count
    return [sorted(s) for s in shares if s]


def parallel_fold(
    settings: Settings,
    target: str,
    targets: dict[int, int],
    workers: int,
    progress: Callable[[int], None] | None = None,
    *,
    limits: RecordLimits,
) -> FoldTotals:
    """Fold ``targets`` (partition -> end offset) into the empty schema ``target`` with up
    to ``workers`` processes; then write the merged blob rows. ``limits``: the topics'
    record size limits (asked once by the parent, not by every worker)."""
    busy = {p: t for p, t in targets.items() if t > 0}
    shares = deal_partitions(busy, max(1, min(workers, len(busy))))
    ctx = multiprocessing.get_context("spawn")  # no librdkafka/psycopg state crosses a fork
    counts = ctx.Array("q", len(shares), lock=False)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, target, share, targets, counts, i, results, limits),
            name=f"replay-worker-{i}",
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    got: dict[int, WorkerResult] = {}
    try:
        while len(got) < len(procs):
            try:
                result: WorkerResult = results.get(timeout=0.5)
                got[result.slot] = result
            except Exception:  # queue.Empty: check for workers that died without a word
                if any(
                    not p.is_alive() and p.exitcode not in (0, None)
                    for i, p in enumerate(procs)
                    if i not in got
                ):
                    raise StackError(
                        "a replay worker died; see its log", service="replay"
                    ) from None
            if progress:
                progress(sum(counts))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [g.error for g in got.values() if g.error]
    if errors:
        raise StackError(f"replay worker failed: {errors[0]}", service="replay")
    merged: dict[str, BlobRow] = {}
    for g in got.values():
        merge_blob_rows(merged, g.blob_rows.items())
    with connect(settings) as conn, translated(), conn.transaction():
        ReadModel(conn, target).write_blob_rows(merged)
    return FoldTotals(
        sum(g.events for g in got.values()),
        sum(g.dead_letters for g in got.values()),
        sum(g.dead_letters_sent for g in got.values()),
    )
