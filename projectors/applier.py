"""Fold a batch of decoded log records into one read-model transaction.

Shared by the live projector and replay, so both produce identical tables. The batch is
folded in memory against the states it touches (loaded in one round trip), then written
together with the new checkpoints. Only the read model's port (projectors/ports.py) is used
here: Postgres (projectors/readmodel.py) and the in-memory twin (projectors/memory.py) fold
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import psycopg

from blobledger.projectors.fold import ObjectState, Upload, apply, unauthenticated
from blobledger.projectors.ports import ReadModelPort
from blobledger.projectors.rows import BatchWrite, OutcomeRow
from blobledger.schemas.errors import InfrastructureError, PermanentError
from blobledger.schemas.events import BlobAttached, BlobStored, BlobUploadFailed, Event


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded message and its position in the log."""

    topic: str
    partition: int
    offset: int
    #: None for a dead-lettered message: it only moves the checkpoint
    event: Event | None
    #: why the record's authenticator did not verify (set by the decoder; None: verified)
    unauthenticated: str | None = None


@dataclass
class BatchStats:
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    stale: int = 0  # below the checkpoint: folded by someone else already
    dead_letters: int = 0  # records whose write Postgres refused (isolated by bisection)
    #: the fold's reason for each rejected event (metrics count them by code)
    rejected_reasons: list[str | None] = field(default_factory=list)
    #: envelope time (µs) of each event folded now, accepted or rejected (not duplicates
    #: or stale records): the live projector's command -> visible samples
    occurred_at: list[int] = field(default_factory=list)
    #: partitions whose checkpoint is behind what we were handed (the caller must seek)
    rewind: dict[int, int] = field(default_factory=dict)


def _upload_id(event: Event) -> str | None:
    if isinstance(event, (BlobAttached, BlobStored, BlobUploadFailed)):
        return event.upload_id
    return None


def apply_batch(
    model: ReadModelPort,
    topic: str,
    records: Sequence[Record],
    positions: dict[int, int] | None = None,
) -> BatchStats:
    """Fold ``records`` (in log order per partition) and write the result, in the
    caller's transaction. ``positions`` maps partition -> the offset the caller's
    consumer started from; when the stored checkpoint disagrees (another projector
    moved ahead, or a swap/recovery moved it back), records are skipped or a rewind is
    requested instead of folding anything twice or leaving a gap."""
    stats = BatchStats()
    mine = {r.partition for r in records}
    stored = model.begin_batch(topic, mine)
    write = BatchWrite()
    fresh: list[Record] = []
    for rec in records:
        next_offset = stored.get(rec.partition, 0)
        if positions is not None and positions.get(rec.partition, 0) > next_offset:
            # the checkpoint is behind where our consumer stands (a replay swapped the
            # schema in, or the read model was recovered): folding on would leave a gap
            stats.rewind[rec.partition] = next_offset
            continue
        if rec.offset < next_offset:
            stats.stale += 1
            continue
        fresh.append(rec)
    if (
        model.memo
        and not model.complete
        and positions is not None
        and any(stored.get(p, 0) != positions.get(p, 0) for p in mine)
    ):
        # someone else moved a checkpoint since our last batch: our memo may be stale
        model.memo_reset()
    if not fresh:
        return stats

    events = [r for r in fresh if r.event is not None]
    objects, uploads, seen = model.load_all(
        {r.event.object_id for r in events},  # type: ignore[union-attr]
        {u for r in events if (u := _upload_id(r.event))},  # type: ignore[arg-type]
        [r.event.event_id for r in events],  # type: ignore[union-attr]
        write.texts,
    )
    fold_records(events, objects, uploads, seen, write, stats)
    for rec in fresh:
        write.checkpoints[(rec.topic, rec.partition)] = rec.offset + 1
    model.write(write)
    return stats


def fold_records(
    records: Iterable[Record],
    objects: dict[str, ObjectState],
    uploads: dict[str, Upload],
    seen: set[str],
    write: BatchWrite,
    stats: BatchStats,
) -> None:
    """The in-memory part: fold each record, collecting rows into ``write``."""
    for rec in records:
        event = rec.event
        if event is None:
            continue
        env = event.envelope
        if env.event_id in seen:
            stats.duplicates += 1
            continue
        seen.add(env.event_id)
        stats.occurred_at.append(env.occurred_at)
        state = objects.get(env.object_id)
        if rec.unauthenticated is None:
            result = apply(state, event, uploads)
        else:
            result = unauthenticated(state)
        out = result.outcome
        write.outcomes.append(
            OutcomeRow(
                env.event_id,
                env.object_id,
                event.event_type,
                env.tenant,
                env.actor,
                out.status,
                out.reason,
                out.version,
                env.correlation_id,
                env.occurred_at,
                rec.partition,
                rec.offset,
            )
        )
        if not out.accepted:
            stats.rejected += 1
            stats.rejected_reasons.append(out.reason)
        else:
            stats.applied += 1
        if result.state is not None and result.state is not state:
            objects[env.object_id] = result.state
            write.objects[env.object_id] = result.state
            if state is None or result.state.acl != state.acl:
                write.acl_changed.add(env.object_id)
        if result.new_version and result.state is not None:
            write.version_row(
                result.state,
                env.event_id,
                event.event_type,
                env.actor,
                env.occurred_at,
                env.correlation_id,
            )
        if result.upload is not None:
            uploads[result.upload.upload_id] = result.upload
            write.uploads[result.upload.upload_id] = result.upload
        for sha, delta in result.ref_deltas.items():
            write.ref_deltas[sha] = write.ref_deltas.get(sha, 0) + delta


# --- poison isolation -----------------------------------------------------------------------------
#: SQLSTATE classes that blame the data: data exceptions (bad text, out of range),
#: integrity violations, program limits (e.g. an index row too large)
POISON_SQLSTATE_CLASSES = ("22", "23", "54")


def is_poison(exc: BaseException) -> bool:
    """True when a batch failed because of what some record holds (retrying the same
    records can never succeed), False for failures of the environment (connection lost,
    deadlock, a missing table) that a retry or an operator fixes."""
    e: BaseException | None = exc
    while e is not None:
        state = getattr(e, "sqlstate", None)
        if state:  # first: some OperationalErrors blame the data (54000: index row too large)
            return state[:2] in POISON_SQLSTATE_CLASSES
        if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
            return False  # the connection went away (no SQLSTATE): not the record's fault
        e = e.__cause__
    # a Python error raised while folding or formatting a record (deep JSON, overflow...)
    return isinstance(exc, Exception) and not isinstance(exc, (InfrastructureError, MemoryError))


class UnstorableRecord(PermanentError):
    """The read model refuses a record (its dead letter's ``dlq.error_code``)."""

    code = "unstorable"


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


#: called with a record that cannot be written and why; must make it durable (DLQ) before
#: returning, since the checkpoint then moves past the record
DeadLetter = Callable[[Record, Exception], None]


def apply_isolating(
    model: ReadModelPort,
    topic: str,
    records: Sequence[Record],
    positions: dict[int, int] | None,
    dead_letter: DeadLetter,
) -> BatchStats:
    """:func:`apply_batch` in its own transaction(s). When the batch fails because of a
    record (:func:`is_poison`), bisect it: each half is committed on its own, in log order,
    until the offending record is alone; that one is dead-lettered and the checkpoint moves
    past it, and everything else is folded. Other failures propagate (nothing of the failing
    part is committed; the parts before it are).

    ``positions`` (live projectors: partition -> next offset the consumer delivers) is
    updated in place as parts commit, so a caller that rewinds after an error rewinds to
    exactly what is committed."""
    total = BatchStats()
    _apply_part(model, topic, list(records), positions, dead_letter, total)
    return total


def _apply_part(
    model: ReadModelPort,
    topic: str,
    records: list[Record],
    positions: dict[int, int] | None,
    dead_letter: DeadLetter,
    total: BatchStats,
) -> None:
    if total.rewind:  # a partition was rewound by an earlier part: its later records wait
        records = [r for r in records if r.partition not in total.rewind]
    if not records:
        return
    try:
        with model.transaction():
            stats = apply_batch(
                model, topic, records, None if positions is None else dict(positions)
            )
    except BaseException as e:
        model.rolled_back()
        if not is_poison(e) or all(r.event is None for r in records):
            raise
        if len(records) == 1:
            root = _root(e)
            why = UnstorableRecord(
                f"the read model refused this record: {type(root).__name__}: {root}"
            )
            why.__cause__ = e
            dead_letter(records[0], why)
            _apply_part(
                model, topic, [replace(records[0], event=None)], positions, dead_letter, total
            )
            total.dead_letters += 1
            return
        mid = len(records) // 2
        _apply_part(model, topic, records[:mid], positions, dead_letter, total)
        _apply_part(model, topic, records[mid:], positions, dead_letter, total)
        return
    model.committed()
    total.applied += stats.applied
    total.rejected += stats.rejected
    total.rejected_reasons += stats.rejected_reasons
    total.occurred_at += stats.occurred_at
    total.duplicates += stats.duplicates
    total.stale += stats.stale
    total.rewind.update(stats.rewind)
    if positions is not None:
        for rec in records:
            if rec.partition not in stats.rewind:
                positions[rec.partition] = rec.offset + 1
        positions.update(stats.rewind)
