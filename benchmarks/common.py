"""Shared pieces of the benchmarks: the result row, the table, the stack context and
helpers to fill a topic."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blobledger.infra.kafka import HeaderList
from blobledger.infra.settings import Settings

FIELDS = ("id", "what", "ours", "baseline", "baseline_name", "ratio", "unit", "target", "met")
#: where the blob benchmarks write their files, under the data dir (blobs.scratch_dir)
SCRATCH_SUBDIR = "bench-blobs"


# --- the result row ---------------------------------------------------------------------------
def target_met(ratio: float | None, target: str) -> bool | None:
    """Evaluate a target such as ``">= 0.5"`` or ``"<= 1.5"`` against ``ratio``."""
    if ratio is None or ratio != ratio:  # None or NaN
        return None
    op, _, value = target.strip().partition(" ")
    bound = float(value.split()[0])
    return {">=": ratio >= bound, "<=": ratio <= bound, ">": ratio > bound, "<": ratio < bound}[op]


def _round(x: float | None, digits: int = 3) -> float | None:
    if x is None or not math.isfinite(x):
        return x
    if x == 0:
        return 0.0
    # keep ~4 significant digits for small values, 1 decimal for large ones
    return (
        round(x, max(1, digits - math.floor(math.log10(abs(x))))) if abs(x) < 100 else round(x, 1)
    )


def result(
    id_: str,
    what: str,
    ours: float | None,
    baseline: float | None,
    baseline_name: str,
    unit: str,
    target: str,
    *,
    ratio: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One output row. ``ratio`` defaults to ours/baseline (rates); latency benchmarks pass
    their own baseline-relative ratio as their target states it."""
    if ratio is None and ours is not None and baseline:
        ratio = ours / baseline
    row: dict[str, Any] = {
        "id": id_,
        "what": what,
        "ours": _round(ours),
        "baseline": _round(baseline),
        "baseline_name": baseline_name,
        "ratio": _round(ratio),
        "unit": unit,
        "target": target,
        "met": target_met(ratio, target) if target else None,
    }
    for k, v in (extra or {}).items():
        row[k] = _round(v) if isinstance(v, float) else v
    return row


def not_available(id_: str, target: str) -> dict[str, Any]:
    row = result(id_, "not available", None, None, "", "", "")
    row["available"] = False
    row["detail"] = f"{target} is not installed in this tree"
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A readable table of result rows (extra fields on an indented line below each)."""
    if not rows:
        return "(no benchmarks run)"
    head = ("id", "what", "ours", "baseline", "ratio", "target", "met")
    body = []
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        unit = r.get("unit") or ""
        ours = "-" if r.get("ours") is None else f"{r['ours']:,} {unit}".strip()
        base = "-" if r.get("baseline") is None else f"{r['baseline']:,} {unit}".strip()
        if r.get("baseline_name"):
            base += f" ({r['baseline_name']})"
        ratio = "-" if r.get("ratio") is None else str(r["ratio"])
        body.append(
            (r["id"], str(r.get("what", "")), ours, base, ratio, str(r.get("target") or "-"), met)
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(head, widths, strict=True))]
    for r, b in zip(rows, body, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())
        extra = {k: v for k, v in r.items() if k not in FIELDS}
        if extra:
            lines.append("      " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# --- the stack -----------------------------------------------------------------------------------
@dataclass
class BenchContext:
    settings: Settings
    #: "embedded (started)", "embedded (running)" or "external"
    stack: str

    def fresh(self, name: str) -> Settings:
        """Settings with a topic prefix, read-model schema and consumer groups of their own
        (topics created)."""
        from blobledger.infra.topics import ensure_topics

        tag = f"{name.lower()}_{uuid.uuid4().hex[:8]}"
        # the blob benchmarks' files are a source root of their worker: read in place, not
        # spooled, so a re-upload is a stat-cache hit (P6) as for any file under a root
        scratch = Path(self.settings.data_dir).resolve() / SCRATCH_SUBDIR
        s = self.settings.with_(
            topic_prefix=f"bench.{tag}",
            read_model_schema=f"bench_{tag}",
            projector_group=f"bench-{tag}",
            worker_group=f"bench-{tag}-worker",
            source_roots=os.pathsep.join(filter(None, (self.settings.source_roots, str(scratch)))),
        )
        ensure_topics(s)
        return s

    def drop(self, settings: Settings, *schemas: str) -> None:
        """Remove a benchmark's schemas (topics stay; the broker has no cheap delete on S3)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            for schema in schemas or (settings.read_model_schema,):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )

    @property
    def broker_storage(self) -> str:
        return (
            self.settings.broker_storage
            if self.settings.embedded_kafka or "embedded" in self.stack
            else "external"
        )


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def open_context(
    *, broker_storage: str | None = None, keep: bool = False
) -> Iterator[BenchContext]:
    """The configured stack: external endpoints as they are; otherwise an embedded stack
    (ours if it is already up and healthy, else started in ``<data_dir>/bench``)."""
    from blobledger.infra.stack.launcher import Stack
    from blobledger.infra.testing.embedded import embedded_settings, resolved

    settings = Settings.from_env()
    if broker_storage:
        settings = settings.with_(broker_storage=broker_storage)
    if not settings.uses_embedded_stack:
        yield BenchContext(settings, "external")
        return
    running = Stack(settings)
    if running.healthy():
        yield BenchContext(resolved(settings), "embedded (running)")
        return
    bench = settings.with_(data_dir=settings.data_dir / "bench")
    ports = (
        bench.pg_port,
        bench.s3_port,
        bench.kafka_port,
        bench.weed_master_port,
        bench.weed_volume_port,
        bench.weed_filer_port,
        bench.log_s3_port,
        bench.log_weed_master_port,
        bench.log_weed_volume_port,
        bench.log_weed_filer_port,
    )
    if any(_port_busy(p) for p in ports):
        bench = embedded_settings(bench, bench.data_dir, broker_storage=bench.broker_storage)
    stack = Stack(bench)
    print(
        f"bench: starting the embedded stack in {bench.data_dir} "
        f"(broker storage {bench.broker_storage})",
        file=sys.stderr,
    )
    stack.up()
    try:
        yield BenchContext(resolved(bench), "embedded (started)")
    finally:
        if not keep:
            stack.down()


# --- filling a topic ------------------------------------------------------------------------------
def publish_values(
    settings: Settings,
    topic: str,
    items: Iterable[tuple[bytes, bytes]],
    headers: Iterable[HeaderList | None] | None = None,
) -> int:
    """Produce (key, value) pairs (with ``headers``, one list per pair) as fast as the
    producer takes them; returns the count."""
    from blobledger.infra.kafka import make_producer

    overrides: dict[str, Any] = {
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
    }
    producer = make_producer(settings, **overrides)
    n = 0
    per_item = iter(headers) if headers is not None else None
    for key, value in items:
        hdrs = next(per_item) if per_item is not None else None
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=hdrs)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not acknowledged by the broker")
    return n


def fill_events(settings: Settings, n: int, *, seed: int = 7) -> list[bytes]:
    """Publish the benchmark workload's first ``n`` events; returns the encoded values in
    publish order (the floor re-uses them)."""
    from blobledger.benchmarks.workload import events
    from blobledger.infra.keys import local_signer
    from blobledger.schemas.auth import AUTH_HEADER, authenticator
    from blobledger.schemas.codec import default_codec

    codec = default_codec()
    key_for = local_signer(settings)
    t0 = time.monotonic()
    evs = list(events(n, seed=seed))
    pairs = [(e.object_id.encode(), codec.encode(e)) for e in evs]
    # signed as their actors' processes sign them: the projector verifies every event
    auth: list[HeaderList | None] = [
        [(AUTH_HEADER, authenticator(key_for(e.envelope.actor), v))]
        for e, (_, v) in zip(evs, pairs, strict=True)
    ]
    publish_values(settings, settings.events_topic, pairs, auth)
    print(
        f"bench: published {n} events to {settings.events_topic} in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    return [v for _, v in pairs]
