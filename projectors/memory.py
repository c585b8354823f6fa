"""The read model on plain dicts: the in-memory twin of the Postgres ReadModel.

It implements the same port (projectors/ports.py), the way the eventsourcing library pairs
a POPO recorder with each Postgres recorder: ``apply_batch``/``apply_isolating`` fold into
it unchanged, so the fold's callers can be exercised without a database, and
tests/contract checks that both models end up holding the same objects, uploads, outcomes,
blobs and checkpoints. One writer at a time (no locks); a transaction is a snapshot that
is put back when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from blobledger.projectors.copytext import TextCache
from blobledger.projectors.fold import ObjectState, Upload
from blobledger.projectors.rows import (
    BatchWrite,
    BlobRow,
    OutcomeRow,
    VersionRow,
    blob_rows,
    merge_blob_rows,
)


class UniqueViolation(ValueError):
    """A row whose primary key is taken, refused as Postgres refuses it (same SQLSTATE,
    so :func:`~blobledger.projectors.applier.is_poison` blames the record alike)."""

    sqlstate = "23505"


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A ``blobs`` row."""

    size: int | None
    key: str
    ref_count: int
    first_stored_at: int | None  # microseconds since the epoch


class InMemoryReadModel:
    """The read model's tables as dicts (implements
    :class:`~blobledger.projectors.ports.ReadModelPort`)."""

    #: the dicts are the store: there is no memo to keep or to reset
    memo = False
    complete = False

    def __init__(self) -> None:
        self.objects: dict[str, ObjectState] = {}
        self.uploads: dict[str, Upload] = {}
        #: event_id -> outcome
        self.outcomes: dict[str, OutcomeRow] = {}
        #: (object_id, version) -> snapshot
        self.versions: dict[tuple[str, int], VersionRow] = {}
        #: object_id -> {(principal, permission)} (the ``acl_entries`` table)
        self.acl_entries: dict[str, frozenset[tuple[str, str]]] = {}
        #: sha256 -> blob
        self.blobs: dict[str, StoredBlob] = {}
        #: (topic, partition) -> next offset (the ``checkpoints`` table)
        self.offsets: dict[tuple[str, int], int] = {}

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return (
            self.objects,
            self.uploads,
            self.outcomes,
            self.versions,
            self.acl_entries,
            self.blobs,
            self.offsets,
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Keep the block's changes, or none of them when it raises (nested: per level).
        Values are immutable, so a shallow copy of each table is the snapshot."""
        saved = [dict(t) for t in self._tables()]
        try:
            yield
        except BaseException:
            for table, before in zip(self._tables(), saved, strict=True):
                table.clear()
                table.update(before)
            raise

    def begin_batch(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        return self.checkpoints(topic, partitions=partitions)

    def checkpoints(
        self, topic: str, *, lock: bool = False, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        wanted = None if partitions is None else set(partitions)
        return {
            p: offset
            for (t, p), offset in sorted(self.offsets.items())
            if t == topic and (wanted is None or p in wanted)
        }

    def load_all(
        self,
        object_ids: Iterable[str],
        upload_ids: Iterable[str],
        event_ids: Iterable[str],
        texts: TextCache | None = None,
    ) -> tuple[dict[str, ObjectState], dict[str, Upload], set[str]]:
        objects = {oid: s for oid in object_ids if (s := self.objects.get(oid)) is not None}
        uploads = {uid: u for uid in upload_ids if (u := self.uploads.get(uid)) is not None}
        return objects, uploads, {e for e in event_ids if e in self.outcomes}

    def write(self, batch: BatchWrite) -> None:
        """Store a folded batch and its checkpoints; call it inside :meth:`transaction`
        (a refused row leaves the rows before it written until the block rolls back)."""
        for o in batch.outcomes:
            if o.event_id in self.outcomes:
                raise UniqueViolation(f"event_outcomes: event_id {o.event_id} exists")
            self.outcomes[o.event_id] = o
        for v in batch.versions:
            if (v.object_id, v.version) in self.versions:
                raise UniqueViolation(f"object_versions: {v.object_id} v{v.version} exists")
            self.versions[(v.object_id, v.version)] = v
        self.objects.update(batch.objects)
        for oid in batch.acl_changed:
            acl = batch.objects[oid].acl
            entries = frozenset((p, perm) for p, perms in acl.items() for perm in perms)
            if entries:
                self.acl_entries[oid] = entries
            else:
                self.acl_entries.pop(oid, None)
        self.uploads.update(batch.uploads)
        rows: dict[str, BlobRow] = {}
        merge_blob_rows(rows, blob_rows(batch))
        for sha, r in rows.items():
            self._store_blob(sha, r)
        self.offsets.update(batch.checkpoints)

    def _store_blob(self, sha: str, r: BlobRow) -> None:
        """What the Postgres upsert does: a row with a key is inserted or adds its count
        (earliest first_stored_at wins); a bare count change updates an existing row only."""
        old = self.blobs.get(sha)
        if r.key is not None:
            if old is None:
                self.blobs[sha] = StoredBlob(r.size, r.key, r.ref_delta, r.first_stored_at)
                return
            first = old.first_stored_at
            if r.first_stored_at is not None:
                first = r.first_stored_at if first is None else min(first, r.first_stored_at)
            self.blobs[sha] = StoredBlob(old.size, old.key, old.ref_count + r.ref_delta, first)
        elif r.ref_delta and old is not None:
            self.blobs[sha] = StoredBlob(
                old.size, old.key, old.ref_count + r.ref_delta, old.first_stored_at
            )

    def committed(self) -> None:
        """Nothing to learn: the dicts already hold the batch."""

    def rolled_back(self) -> None:
        """Nothing to forget: :meth:`transaction` put the dicts back."""

    @property
    def broken(self) -> bool:
        """Dicts do not lose their connection."""
        return False

    def close(self) -> None:
        """Nothing to release: the tables stay readable for the test that owns them."""

    def memo_reset(self) -> None:
        """Nothing to drop: there is no memo."""
