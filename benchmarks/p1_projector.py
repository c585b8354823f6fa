"""P1: projector apply rate vs the floor, measured side by side in one run.

Both sides read the same N events from the same topic with the same consumer tuning and
write into the same Postgres in the same batch size, one transaction per batch:

- the floor: raw consume + decode + COPY of the very rows the projector writes (formatted
  beforehand, untimed) into the read-model tables (append-only ones as the projector has
  them, mutable ones into plain tables: no upsert, no lookups, no fold);
- ours: the real projector (:class:`projectors.runner.Projector`) on a fresh schema.

Each clock starts at the first message received, so the group join is not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import psycopg
from confluent_kafka import TopicPartition
from psycopg import sql

from benchmarks.common import BenchContext, fill_events, result
from infra.kafka import end_offsets, make_consumer
from infra.settings import Settings
from projectors import readmodel as rm
from projectors.applier import BatchStats, Record, fold_records
from schemas.codec import default_codec

ABS_TARGET = 20_000.0


def precompute(values: list[bytes], batch: int) -> list[dict[str, str]]:
    """The COPY text the projector writes, per batch of ``batch`` events (publish order)."""
    codec = default_codec()
    objects: dict[str, Any] = {}
    uploads: dict[str, Any] = {}
    seen: set[str] = set()
    out = []
    for i in range(0, len(values), batch):
        w, st = rm.BatchWrite(), BatchStats()
        recs = [Record("t", 0, i + j, codec.decode(v)) for j, v in enumerate(values[i:i + batch])]
        fold_records(recs, objects, uploads, seen, w, st)
        acl = "".join(f"{o}\t{rm._e(p)}\t{rm._e(m)}\n" for o in sorted(w.acl_changed)
                      for p, perms in sorted(w.objects[o].acl.items()) for m in sorted(perms))
        out.append({
            "event_outcomes": "".join(map(rm.outcome_line, w.outcomes)),
            "object_versions": "".join(rm.version_line(v, w.texts) for v in w.versions),
            "objects_raw": "".join(rm.object_line(s, w.texts) for s in w.objects.values()),
            "uploads_raw": "".join(map(rm.upload_line, w.uploads.values())),
            "acl_raw": acl,
        })
    return out


COLUMNS = {
    "event_outcomes": rm.OUTCOME_COLUMNS,
    "object_versions": rm.VERSION_COLUMNS,
    "objects_raw": rm.OBJECT_COPY_COLUMNS,
    "uploads_raw": rm.UPLOAD_COPY_COLUMNS,
    "acl_raw": ("object_id", "principal", "permission"),
}


def floor(settings: Settings, batches: list[dict[str, str]], total: int, batch: int) -> float:
    schema = settings.read_model_schema + "_floor"
    with psycopg.connect(settings.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        rm.migrate(admin, schema)
        for raw, src in (("objects_raw", "objects"), ("uploads_raw", "uploads"), ("acl_raw", "acl_entries")):
            admin.execute(sql.SQL("CREATE TABLE {s}.{r} (LIKE {s}.{t} INCLUDING DEFAULTS)").format(
                s=sql.Identifier(schema), r=sql.Identifier(raw), t=sql.Identifier(src)))
    codec = default_codec()
    consumer = make_consumer(settings, f"{settings.projector_group}.floor")
    parts = sorted(end_offsets(settings, settings.events_topic))
    consumer.assign([TopicPartition(settings.events_topic, p, 0) for p in parts])
    conn = psycopg.connect(settings.dsn)
    stmts = {t: sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema), sql.Identifier(t), sql.SQL(", ").join(map(sql.Identifier, c)))
        for t, c in COLUMNS.items()}
    got, b, t0 = 0, 0, None
    try:
        while got < total:
            msgs = consumer.consume(batch, 1.0)
            if not msgs:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            for m in msgs:
                if m.error() is None:
                    codec.decode(m.value())
                    got += 1
            # the rows of as many events as were consumed (same batch size as the projector)
            while b < len(batches) and b * batch < got:
                with conn.transaction():
                    for table, text in batches[b].items():
                        if text:
                            with conn.cursor().copy(stmts[table]) as cp:
                                cp.write(text)
                b += 1
        seconds = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        consumer.close()
        conn.close()
    return total / seconds


def ours(settings: Settings, total: int) -> tuple[float, dict[str, Any]]:
    from projectors.runner import Projector

    projector = Projector(settings)
    try:
        projector.subscribe()
        done, t0 = 0, None
        deadline = time.monotonic() + 600
        while done < total and time.monotonic() < deadline:
            msgs = projector.poll_batch(1.0)
            if not msgs:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            projector.process(msgs)
            done += len(msgs)
        seconds = time.perf_counter() - (t0 or time.perf_counter())
        t = projector.totals
        return done / seconds, {"applied": t.applied, "rejected": t.rejected, "batches": t.batches}
    finally:
        projector.close()


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    s = ctx.fresh("p1")
    n = args.events
    values = fill_events(s, n)
    total = sum(end_offsets(s, s.events_topic).values())
    batch = s.projector_batch_size
    batches = precompute(values, batch)
    del values
    print("bench P1: floor (consume + decode + COPY of the same rows)...", file=sys.stderr)
    base = floor(s, batches, total, batch)
    del batches
    print("bench P1: projector...", file=sys.stderr)
    rate, info = ours(s, total)
    row = result("P1", f"projector apply rate, {total} events", rate, base,
                 "consume + decode + COPY of the same rows", "events/s", ">= 0.5",
                 extra={"events": total, "ours_events_per_s": round(rate), "floor_events_per_s": round(base),
                        "abs_target": ">= 20000 events/s", "met_ratio": rate / base >= 0.5,
                        "met_abs": rate >= ABS_TARGET, "batch_size": batch,
                        "broker_storage": ctx.broker_storage, "stack": ctx.stack, **info})
    row["met"] = bool(row["met_ratio"] and row["met_abs"])
    ctx.drop(s, s.read_model_schema, s.read_model_schema + "_floor")
    return row
