"""The end-of-run checks of a chaos run, each returning counts and the problems it found.

A problem is a broken invariant, written so the reader can go and look (ids, keys,
reasons); the counts go into the run's summary line whether or not anything broke.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError, TopicPartition
from psycopg import sql

from blobledger.infra.kafka import end_offsets, header_value, make_consumer, position_of
from blobledger.infra.s3 import make_s3_client
from blobledger.infra.settings import Settings

from .load import Record

Findings = tuple[dict[str, Any], list[str]]


# --- what the log and the read model hold ----------------------------------------------------
@dataclass
class LogScan:
    """The events topic read from offset 0 to its end, without trusting ListOffsets."""

    #: how often each event id occurs
    counts: Counter[str] = field(default_factory=Counter)
    #: partition -> end offset (where the broker reported partition EOF)
    ends: dict[int, int] = field(default_factory=dict)
    #: partitions that reported no EOF in time -> the next offset read
    stuck: dict[int, int] = field(default_factory=dict)
    #: event id -> where it is: "partition@offset" of each copy
    where: dict[str, list[str]] = field(default_factory=dict)
    #: positions delivered more than once while reading from 0 (overlapping batches)
    repeated_offsets: list[str] = field(default_factory=list)


def scan_log(settings: Settings, timeout: float = 120.0) -> LogScan:
    """Read every partition of the events topic from offset 0 until the broker says EOF."""
    topic = settings.events_topic
    consumer = make_consumer(
        settings, f"{settings.topic_prefix}.chaos-audit", **{"enable.partition.eof": True}
    )
    scan = LogScan()
    try:
        md = consumer.list_topics(topic, timeout=10)
        partitions = sorted(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        nxt = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout
        while len(scan.ends) < len(partitions) and time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.5):
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"reading {topic}: {err.str()}")
                pos = position_of(m)
                if err is not None:
                    scan.ends[pos.partition] = pos.offset
                    continue
                scan.ends.pop(pos.partition, None)  # records after an EOF: not the end yet
                if pos.offset < nxt[pos.partition]:
                    scan.repeated_offsets.append(f"{pos.partition}@{pos.offset}")
                nxt[pos.partition] = pos.offset + 1
                if (event_id := header_value(m.headers(), "event_id")) is not None:
                    scan.counts[event_id] += 1
                    scan.where.setdefault(event_id, []).append(f"{pos.partition}@{pos.offset}")
        scan.stuck = {p: nxt[p] for p in partitions if p not in scan.ends}
    finally:
        consumer.close()
    return scan


def partition_state(settings: Settings) -> dict[str, Any]:
    """Per partition of the events topic: the projector's checkpoint, the broker's
    ListOffsets answer and :func:`end_offsets` (or why it failed): for a report."""
    topic = settings.events_topic
    out: dict[str, Any] = {}
    try:
        with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT partition, next_offset FROM {}.checkpoints WHERE topic = %s"
                ).format(sql.Identifier(settings.read_model_schema)),
                (topic,),
            ).fetchall()
        out["checkpoints"] = dict(sorted(rows))
    except Exception as e:
        out["checkpoints"] = f"{type(e).__name__}: {e}"
    consumer = make_consumer(settings, f"{settings.topic_prefix}.chaos-audit")
    try:
        out["list_offsets"] = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(settings.partitions)
        }
    except Exception as e:
        out["list_offsets"] = f"{type(e).__name__}: {e}"
    finally:
        consumer.close()
    try:
        out["end_offsets"] = end_offsets(settings, topic)
    except Exception as e:
        out["end_offsets"] = f"{type(e).__name__}: {e}"
        if isinstance(out["list_offsets"], dict):
            marks = out["list_offsets"]
            out["probe"] = _probe_tail(settings, marks)
            # end_offsets' own way: it asks ListOffsets first and fetches with a 10 ms wait
            out["probe_as_end_offsets"] = _probe_tail(
                settings, marks, ask_watermarks=True, **{"fetch.wait.max.ms": 10}
            )
    return out


def _probe_tail(
    settings: Settings,
    watermarks: dict[int, tuple[int, int]],
    *,
    ask_watermarks: bool = False,
    **overrides: Any,
) -> dict[int, str]:
    """What a consumer assigned at ListOffsets' high - 1 (as ``end_offsets`` does) sees in
    5 s, per partition: the records' offsets and the partition-EOF events. With
    ``ask_watermarks`` it asks ListOffsets itself first, as ``end_offsets`` does."""
    topic = settings.events_topic
    consumer = make_consumer(
        settings,
        f"{settings.topic_prefix}.chaos-probe",
        **{"enable.partition.eof": True},
        **overrides,
    )
    seen: dict[int, list[str]] = {p: [] for p, (low, high) in watermarks.items() if high > low}
    try:
        if ask_watermarks:
            for p in seen:
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        consumer.assign([TopicPartition(topic, p, watermarks[p][1] - 1) for p in seen])
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                err, partition, offset = m.error(), m.partition(), m.offset()
                if partition in seen and len(seen[partition]) < 12:
                    seen[partition].append(f"{err.name()}@{offset}" if err else str(offset))
    finally:
        consumer.close()
    return {p: " ".join(v) or "nothing" for p, v in seen.items()}


@dataclass
class ReadModelState:
    #: event id -> (status, reason, version)
    outcomes: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)
    #: event id -> how many history rows it produced (an accepted command: exactly one)
    version_rows: Counter[str] = field(default_factory=Counter)
    #: upload id -> (state, sha256, size, key, reason)
    uploads: dict[str, tuple[str, str | None, int | None, str | None, str | None]] = field(
        default_factory=dict
    )
    #: s3 key -> (sha256, size) of every blob something refers to
    referenced: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: keys recorded with two different (sha256, size) claims
    conflicting: list[str] = field(default_factory=list)
    #: partition -> next offset the projector folds
    checkpoints: dict[int, int] = field(default_factory=dict)

    @property
    def checkpoint_total(self) -> int:
        return sum(self.checkpoints.values())


def read_model(settings: Settings) -> ReadModelState:
    state = ReadModelState()
    s = sql.Identifier(settings.read_model_schema)
    with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=10) as conn:
        for event_id, status, reason, version in conn.execute(
            sql.SQL("SELECT event_id, status, reason, version FROM {}.event_outcomes").format(s)
        ):
            state.outcomes[str(event_id)] = (status, reason, version)
        for event_id, n in conn.execute(
            sql.SQL("SELECT event_id, count(*) FROM {}.object_versions GROUP BY 1").format(s)
        ):
            state.version_rows[str(event_id)] = n
        for upload_id, st, sha, size, key, reason in conn.execute(
            sql.SQL("SELECT upload_id, state, sha256, size, key, reason FROM {}.uploads").format(s)
        ):
            state.uploads[str(upload_id)] = (st, sha, size, key, reason)
        refs = sql.SQL(
            "SELECT key, sha256, size FROM {s}.blobs "
            "UNION SELECT blob_key, blob_sha256, blob_size FROM {s}.objects "
            "WHERE blob_key IS NOT NULL "
            "UNION SELECT blob_key, blob_sha256, blob_size FROM {s}.object_versions "
            "WHERE blob_key IS NOT NULL "
            "UNION SELECT key, sha256, size FROM {s}.uploads WHERE state = 'stored'"
        ).format(s=s)
        for key, sha, size in conn.execute(refs):
            if state.referenced.setdefault(key, (sha, size)) != (sha, size):
                state.conflicting.append(key)
        rows = conn.execute(
            sql.SQL("SELECT partition, next_offset FROM {}.checkpoints WHERE topic = %s").format(s),
            (settings.events_topic,),
        ).fetchall()
        state.checkpoints = {int(p): int(o) for p, o in sorted(rows)}
    return state


# --- the checks ----------------------------------------------------------------------------
def check_commands(records: list[Record], rm: ReadModelState, scan: LogScan) -> Findings:
    """What the clients were told against what the read model and the log hold.

    lost: a command the client saw accepted or rejected, or whose event reached the log,
    without an outcome (or, accepted, without its history row); duplicated: an accepted
    event with more than one history row. Commands of unknown outcome go either way
    (counted)."""
    problems: list[str] = []
    in_log = scan.counts
    if scan.stuck:
        problems.append(f"the log could not be read to its end: partition -> offset {scan.stuck}")
    statuses = Counter(r.status for r in records)
    lost = duplicated = mismatched = 0
    unknown_applied = unknown_absent = 0
    ours: set[str] = set()
    for r in records:
        if r.event_id is None:
            continue
        ours.add(r.event_id)
        found = rm.outcomes.get(r.event_id)
        rows = rm.version_rows.get(r.event_id, 0)
        if found is not None and found[0] == "accepted" and rows > 1:
            duplicated += 1
            problems.append(f"duplicated: {r.op} {r.key} event {r.event_id} has {rows} versions")
        if r.status in ("accepted", "rejected"):
            if found is None:
                lost += 1
                problems.append(f"lost: {r.status} {r.op} {r.key} event {r.event_id}")
                continue
            told = (r.status, r.reason, r.version)
            if r.status == "accepted" and rows == 0:
                lost += 1
                problems.append(f"lost: accepted {r.op} {r.key} {r.event_id} has no version row")
            elif (
                found[0] != r.status
                or (r.status == "rejected" and found[1] != r.reason)
                or (r.version is not None and found[2] != r.version)
            ):
                mismatched += 1
                problems.append(f"mismatch: {r.op} {r.key} {r.event_id} told {told}, is {found}")
        elif r.status == "unknown_outcome" and found is None:
            lost += 1
            problems.append(
                f"lost: {r.op} {r.key} event {r.event_id} is in the log at "
                f"{scan.where.get(r.event_id)}, no outcome"
            )
        elif r.status == "unknown_publish":
            if found is not None:
                unknown_applied += 1
            elif in_log.get(r.event_id):
                lost += 1
                problems.append(
                    f"lost: {r.op} {r.key} {r.event_id} is in the log at "
                    f"{scan.where.get(r.event_id)}, no outcome"
                )
            else:
                unknown_absent += 1
    # every other event in the log (the workers', the reaper's) has its fate recorded too
    unfolded = [e for e in in_log if e not in rm.outcomes and e not in ours]
    if unfolded:
        lost += len(unfolded)
        problems.append(f"lost: {len(unfolded)} logged events without an outcome: {unfolded[:5]}")
    counts: dict[str, Any] = {
        "commands": len(records),
        "accepted": statuses["accepted"],
        "rejected": statuses["rejected"],
        "refused": statuses["refused"],
        "unknown_outcome": statuses["unknown_publish"] + statuses["unknown_outcome"],
        "unknown_published_no_answer": statuses["unknown_outcome"],
        "unknown_publish_applied": unknown_applied,
        "unknown_publish_absent": unknown_absent,
        "lost": lost,
        "duplicated": duplicated,
        "mismatched": mismatched,
        "log_events": sum(in_log.values()),
        "log_copies": sum(n - 1 for n in in_log.values() if n > 1),
        "log_repeated_offsets": len(scan.repeated_offsets),
        "log_ends": scan.ends,
        "checkpoints": rm.checkpoints,
        "log_copy_examples": {e: scan.where.get(e) for e, n in in_log.most_common(3) if n > 1},
        "system_events": len(set(in_log) - ours),
        "rejection_reasons": dict(Counter(r.reason for r in records if r.status == "rejected")),
        "refusal_reasons": dict(Counter(r.reason for r in records if r.status == "refused")),
    }
    untranslated = [r for r in records if r.untranslated]
    if untranslated:
        counts["untranslated_errors"] = len(untranslated)
        problems.append(
            f"{len(untranslated)} driver errors reached the caller untranslated, e.g. "
            f"{untranslated[0].op}: {untranslated[0].untranslated}"
        )
    return counts, problems


def check_uploads(records: list[Record], rm: ReadModelState) -> Findings:
    """No upload pending; a failing source never read to the end; completed uploads hold
    their source's bytes. A good source compensated under chaos is allowed (counted)."""
    problems: list[str] = []
    states = Counter(u[0] for u in rm.uploads.values())
    pending = [u for u, row in rm.uploads.items() if row[0] == "pending"]
    if pending:
        problems.append(f"{len(pending)} uploads still pending: {pending[:5]}")
    good_stored = 0
    by_source: Counter[str] = Counter()
    for r in records:
        if r.op != "attach" or r.upload_id is None or r.source is None:
            continue
        row = rm.uploads.get(r.upload_id)
        if row is None:
            if r.status == "accepted":
                problems.append(f"lost: accepted attach {r.upload_id} has no upload row")
            continue
        state, sha, size, _key, reason = row
        src = r.source
        by_source[f"{src.kind}:{state}" + (f":{reason}" if state == "compensated" else "")] += 1
        # stored, or completed after it was superseded: either way bytes were read
        completed = state in ("stored", "orphaned")
        if completed and not src.good:
            problems.append(f"upload {r.upload_id} from a {src.kind} source was {state}")
        if completed and src.good and (sha, size) != (src.sha256, src.size):
            problems.append(f"upload {r.upload_id} {state} {sha}/{size}, not {src.sha256}")
        good_stored += state == "stored" and src.good
    attached = [r for r in records if r.op == "attach" and r.status == "accepted"]
    if attached and not good_stored:
        problems.append("no upload from a good source was stored")
    counts = {
        "uploads": len(rm.uploads),
        "uploads_by_state": dict(states),
        "uploads_attached_by_clients": len(attached),
        "uploads_good_stored": good_stored,
        "uploads_by_source": dict(sorted(by_source.items())),
    }
    return counts, problems


def check_blobs(settings: Settings, rm: ReadModelState) -> Findings:
    """Every blob the read model refers to is in S3 and hashes to what it records."""
    s3 = make_s3_client(settings)
    problems = [f"blob key {k} recorded with two hashes or sizes" for k in rm.conflicting]
    for key, (sha, size) in sorted(rm.referenced.items()):
        try:
            body = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"]
        except Exception as e:
            problems.append(f"blob {key} unreadable: {e}")
            continue
        h, n = hashlib.sha256(), 0
        while chunk := body.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        if (h.hexdigest(), n) != (sha, size):
            problems.append(f"blob {key}: recorded {sha}/{size}, S3 holds {h.hexdigest()}/{n}")
    return {"blobs_checked": len(rm.referenced)}, problems


def open_multipart_uploads(settings: Settings) -> list[str]:
    s3 = make_s3_client(settings)
    found = []
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=settings.s3_bucket):
        found += [f"{u['Key']} ({u['UploadId'][:12]})" for u in page.get("Uploads", [])]
    return found
