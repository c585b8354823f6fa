"""P1: projector apply rate vs the floor, measured side by side in one run.

The fold is partition-local (message key = object id), so the projector is deployed as N
processes in one consumer group, each folding its partitions. Both sides read the same
events from the same topic with the same consumer tuning and write into the same
Postgres in the same batch size, one transaction per batch:

- the floor: N processes (each a share of the partitions) doing raw consume + decode +
  COPY of the very rows the projector writes for what they consumed (formatted
  beforehand, untimed) into the read-model tables (append-only ones as the projector has
  them, mutable ones into plain tables: no upsert, no lookups, no fold);
- ours: N real projectors (:class:`projectors.runner.Projector`) in one consumer group on a
  fresh schema; and, for reference, 1 projector alone on another fresh schema.

N = ``--projectors`` (default: ``os.cpu_count()``). Every process waits until the whole
group holds its partitions before it consumes (the join is not counted); the clock runs
from the first message any process receives to the last commit of any process. Floor and
ours run ``--fold-rounds`` times (default 3) in alternating order, each ours round on a
fresh schema and group; the medians are compared (the floor alone swung 28-47k events/s
between single runs on one machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from confluent_kafka import TopicPartition
from psycopg import sql

from blobledger.benchmarks.common import BenchContext, fill_events, result
from blobledger.infra.kafka import end_offsets, make_consumer, position_of
from blobledger.infra.settings import Settings
from blobledger.projectors import copytext as rm
from blobledger.projectors.applier import BatchStats, Record, fold_records
from blobledger.projectors.migrate import migrate
from blobledger.projectors.parallel_fold import deal_partitions
from blobledger.projectors.rows import BatchWrite
from blobledger.schemas.codec import default_codec

ABS_TARGET = 20_000.0

COLUMNS = {
    "event_outcomes": rm.OUTCOME_COLUMNS,
    "object_versions": rm.VERSION_COLUMNS,
    "objects_raw": rm.OBJECT_COPY_COLUMNS,
    "uploads_raw": rm.UPLOAD_COPY_COLUMNS,
    "acl_raw": ("object_id", "principal", "permission"),
}


def precompute(values: list[bytes], batch: int) -> dict[str, tuple[str, str, str, str, str, str]]:
    """Per event id: (object id, outcome line, version line, object line, upload line, acl
    lines): the COPY text the projector writes for it (folded in publish order, which per
    partition is log order). The object line is the object's state at the end of the
    event's batch, written once per object and floor batch, as the projector does."""
    codec = default_codec()
    objects: dict[str, Any] = {}
    uploads: dict[str, Any] = {}
    seen: set[str] = set()
    out: dict[str, tuple[str, str, str, str, str, str]] = {}
    for i in range(0, len(values), batch):
        w, st = BatchWrite(), BatchStats()
        evs = [codec.decode(v) for v in values[i : i + batch]]
        fold_records(
            [Record("t", 0, i + j, e) for j, e in enumerate(evs)], objects, uploads, seen, w, st
        )
        versions = {v[2]: rm.version_line(v, w.texts) for v in w.versions}
        obj_lines = {oid: rm.object_line(s, w.texts) for oid, s in w.objects.items()}
        by_upload = {u.upload_id: rm.upload_line(u) for u in w.uploads.values()}
        for row, e in zip(w.outcomes, evs, strict=True):
            oid = e.object_id
            acl = ""
            if oid in w.acl_changed and type(e).__name__ in ("AclChanged", "ObjectCreated"):
                acl = "".join(
                    f"{oid}\t{rm._e(p)}\t{rm._e(m)}\n"
                    for p, perms in sorted(w.objects[oid].acl.items())
                    for m in sorted(perms)
                )
            up = by_upload.get(getattr(e, "upload_id", None) or "", "")
            out[row[0]] = (
                oid,
                rm.outcome_line(row),
                versions.get(row[0], ""),
                obj_lines.get(oid, ""),
                up,
                acl,
            )
    return out


def partition_map(settings: Settings, total: int) -> dict[int, list[bytes]]:
    """partition -> the values on it in log order (one untimed pass over the topic)."""
    consumer = make_consumer(settings, f"{settings.projector_group}.map")
    parts = sorted(end_offsets(settings, settings.events_topic))
    consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in parts])
    out: dict[int, list[bytes]] = {p: [] for p in parts}
    got = 0
    try:
        deadline = time.monotonic() + 300
        while got < total and time.monotonic() < deadline:
            for m in consumer.consume(10000, 1.0):
                value = m.value()
                if m.error() is None and value is not None:
                    out[position_of(m).partition].append(value)
                    got += 1
    finally:
        consumer.close()
    return out


# --- the floor -----------------------------------------------------------------------------------
def _floor_child(
    settings: Settings,
    schema: str,
    partitions: list[int],
    lines: dict[str, tuple[str, ...]],
    total: int,
    batch: int,
    ready: Any,
    go: Any,
    results: Any,
    slot: int,
) -> None:
    codec = default_codec()
    consumer = make_consumer(settings, f"{settings.projector_group}.floor")
    consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in partitions])
    conn = psycopg.connect(settings.dsn)
    stmts = {
        t: sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
            sql.Identifier(schema), sql.Identifier(t), sql.SQL(", ").join(map(sql.Identifier, c))
        )
        for t, c in COLUMNS.items()
    }
    ready.release()
    go.wait()
    got, t0, t1 = 0, None, None
    try:
        while got < total:
            msgs = consumer.consume(batch, 1.0)
            if not msgs:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            outc, vers, ups, acls, objs = [], [], [], [], {}
            for m in msgs:
                if m.error() is None:
                    e = codec.decode(m.value())
                    got += 1
                    oid, o, v, ob, u, a = lines[e.event_id]
                    outc.append(o)
                    vers.append(v)
                    objs[oid] = ob
                    ups.append(u)
                    acls.append(a)
            texts = {
                "event_outcomes": "".join(outc),
                "object_versions": "".join(vers),
                "objects_raw": "".join(objs.values()),
                "uploads_raw": "".join(ups),
                "acl_raw": "".join(acls),
            }
            with conn.transaction():
                for table, text in texts.items():
                    if text:
                        with conn.cursor().copy(stmts[table]) as cp:
                            cp.write(text)
            t1 = time.perf_counter()
    finally:
        consumer.close()
        conn.close()
    results.put((slot, t0, t1, got))


def _spawn_timed(
    target: Any, argsets: list[tuple[Any, ...]], go_when: Any = None, timeout: float = 900
) -> tuple[float, int, list[tuple[Any, ...]]]:
    """Start one process per argument set (each gets ``ready, go, results, slot`` appended),
    release them together, collect (slot, t_first, t_last, count, ...); returns
    (seconds from the first message anywhere to the last commit anywhere, count, rows)."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*a, ready, go, results, i), daemon=True)
        for i, a in enumerate(argsets)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a benchmark process did not get ready in 120 s")
        if go_when is not None:
            go_when()
        go.set()
        rows: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(rows) < len(procs):
            try:
                rows.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError("benchmark processes did not finish in time") from None
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a benchmark process died (exit code {dead[0].exitcode})"
                    ) from None
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    starts = [r[1] for r in rows if r[1] is not None]
    ends = [r[2] for r in rows if r[2] is not None]
    count = sum(r[3] for r in rows)
    return (max(ends) - min(starts)) if starts else float("nan"), count, rows


def floor(
    settings: Settings,
    lines: Mapping[str, tuple[str, ...]],
    parts: dict[int, list[bytes]],
    n: int,
    batch: int,
) -> float:
    schema = settings.read_model_schema + "_floor"
    with psycopg.connect(settings.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        migrate(admin, schema)
        for raw, src in (
            ("objects_raw", "objects"),
            ("uploads_raw", "uploads"),
            ("acl_raw", "acl_entries"),
        ):
            admin.execute(
                sql.SQL("CREATE TABLE {s}.{r} (LIKE {s}.{t} INCLUDING DEFAULTS)").format(
                    s=sql.Identifier(schema), r=sql.Identifier(raw), t=sql.Identifier(src)
                )
            )
    codec = default_codec()
    argsets = []
    for share in deal_partitions({p: len(v) for p, v in parts.items()}, n):
        ids = [codec.decode(v).event_id for p in share for v in parts[p]]
        argsets.append((settings, schema, share, {i: lines[i] for i in ids}, len(ids), batch))
    seconds, count, _ = _spawn_timed(_floor_child, argsets)
    return count / seconds


# --- ours --------------------------------------------------------------------------------
def _ours_child(
    settings: Settings, assigned: Any, ready: Any, go: Any, results: Any, slot: int
) -> None:
    from blobledger.infra import bootstrap

    p = bootstrap.projector(settings)
    orig_assign, orig_revoke = p._on_assign, p._on_revoke

    def on_assign(consumer: Any, parts: list[TopicPartition]) -> None:
        orig_assign(consumer, parts)
        if not go.is_set():
            consumer.pause(parts)  # hold still until the whole group is assigned
        assigned[slot] = len(parts)

    def on_revoke(consumer: Any, parts: list[TopicPartition]) -> None:
        assigned[slot] = 0
        orig_revoke(consumer, parts)

    p.consumer.subscribe([p.topic], on_assign=on_assign, on_revoke=on_revoke)
    ready.release()
    resumed, t0, t1 = False, None, None
    stop_at = None
    try:
        while True:
            if go.is_set() and not resumed:
                p.consumer.resume(p.consumer.assignment())
                resumed = True
            msgs = p.poll_batch(0.1)
            if msgs:
                if t0 is None:
                    t0 = time.perf_counter()
                p.process(msgs)
                t1 = time.perf_counter()
                stop_at = None
            elif resumed and assigned[len(assigned) - 1] == -1:  # the parent saw everything folded
                break
            elif resumed and stop_at is None:
                stop_at = time.monotonic()
        t = p.totals
        results.put((slot, t0, t1, t.folded + t.duplicates + t.stale, t.batches))
    finally:
        p.close()


def ours(settings: Settings, total: int, n: int) -> tuple[float, dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    assigned = ctx.Array("q", n + 1, lock=False)  # the last slot: -1 = stop
    n_parts = len(end_offsets(settings, settings.events_topic))

    def all_assigned() -> None:
        stable_since, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = list(assigned[:n])
            full = sum(counts) == n_parts and all(c > 0 for c in counts[: min(n, n_parts)])
            if full:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 2.0:
                    return
            else:
                stable_since = None
            time.sleep(0.05)
        raise RuntimeError(f"the projector group did not settle: assigned {list(assigned[:n])}")

    import threading

    def stop_when_done() -> None:
        conn = psycopg.connect(settings.dsn, autocommit=True)
        try:
            while True:
                try:
                    row = conn.execute(
                        sql.SQL("SELECT coalesce(sum(next_offset), 0) FROM {}.checkpoints").format(
                            sql.Identifier(settings.read_model_schema)
                        )
                    ).fetchone()
                    done = row[0] if row else 0
                except psycopg.errors.UndefinedTable:
                    done = 0
                if done >= total:
                    assigned[n] = -1
                    return
                time.sleep(0.05)
        finally:
            conn.close()

    watcher = threading.Thread(target=stop_when_done, daemon=True)
    watcher.start()
    seconds, _, rows = _spawn_timed(_ours_child, [(settings, assigned)] * n, go_when=all_assigned)
    return total / seconds, {"batches": sum(r[4] for r in rows)}


ROUNDS = 3


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    s = ctx.fresh("p1")
    n_proc = getattr(args, "projectors", None) or os.cpu_count() or 1
    rounds = max(1, int(getattr(args, "fold_rounds", None) or ROUNDS))
    n = args.events
    values = fill_events(s, n)
    total = sum(end_offsets(s, s.events_topic).values())
    batch = s.projector_batch_size
    lines = precompute(values, batch)
    del values
    parts = partition_map(s, total)
    one_settings = s.with_(
        read_model_schema=s.read_model_schema + "_one", projector_group=s.projector_group + "-one"
    )
    print("bench P1: 1 projector (reference)...", file=sys.stderr)
    rate1, info1 = ours(one_settings, total, 1)
    # the floor's and ours' rates drift with the machine: alternate them, compare medians
    floors: list[float] = []
    rates: list[float] = []
    batches = 0
    schemas = [one_settings.read_model_schema]
    for i in range(rounds):
        mine = s.with_(
            read_model_schema=f"{s.read_model_schema}_r{i}",
            projector_group=f"{s.projector_group}-r{i}",
        )
        schemas.append(mine.read_model_schema)
        steps = ("floor", "ours") if i % 2 == 0 else ("ours", "floor")
        for step in steps:
            print(
                f"bench P1: round {i + 1}/{rounds} {step} ({n_proc} processes)...", file=sys.stderr
            )
            if step == "floor":
                floors.append(floor(s, lines, parts, n_proc, batch))
            else:
                rate, info = ours(mine, total, n_proc)
                rates.append(rate)
                batches = info["batches"]
    del lines, parts
    rate, base = statistics.median(rates), statistics.median(floors)
    row = result(
        "P1",
        f"projector apply rate, {total} events, {n_proc} projector processes in one group "
        f"(ours = the {n_proc}-process rate; floor = {n_proc} consumers), median of {rounds} "
        "alternating rounds",
        rate,
        base,
        f"{n_proc} x (consume + decode + COPY of the same rows)",
        "events/s",
        ">= 0.5",
        extra={
            "events": total,
            "projectors": n_proc,
            "rounds": rounds,
            "ours_events_per_s_runs": [round(r) for r in rates],
            "floor_events_per_s_runs": [round(f) for f in floors],
            "pairwise_ratios": [round(r / f, 3) for r, f in zip(rates, floors, strict=True)],
            "ours_1_process_events_per_s": round(rate1),
            "abs_target": ">= 20000 events/s",
            "met_ratio": rate / base >= 0.5,
            "met_abs": rate >= ABS_TARGET,
            "batch_size": batch,
            "batches": batches,
            "batches_1_process": info1["batches"],
            "broker_storage": ctx.broker_storage,
            "stack": ctx.stack,
        },
    )
    row["met"] = bool(row["met_ratio"] and row["met_abs"])
    ctx.drop(s, s.read_model_schema + "_floor", *schemas)
    return row
