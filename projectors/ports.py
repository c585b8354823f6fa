"""The read model's port: what the fold's caller needs from wherever the views are kept.

The applier (projectors/applier.py) and the projector runner use exactly these members,
so they run unchanged against Postgres (projectors/readmodel.py: ReadModel) and against
plain dicts (projectors/memory.py: InMemoryReadModel); tests/contract holds the one test
suite both must pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from blobledger.projectors.copytext import TextCache
from blobledger.projectors.fold import ObjectState, Upload
from blobledger.projectors.rows import BatchWrite


class ReadModelPort(Protocol):
    """A read model the fold writes into, one batch per :meth:`transaction`.

    A batch is: ``begin_batch`` (lock and read the partitions' checkpoints), ``load_all``
    (the states the batch touches and which of its events were applied already),
    ``write`` (rows and new checkpoints), all inside one ``transaction``; then
    ``committed`` or, when the transaction failed, ``rolled_back``.
    """

    @property
    def memo(self) -> bool:
        """True when the model keeps the states it wrote between batches (then a checkpoint
        someone else moved calls for :meth:`memo_reset`)."""
        ...

    @property
    def complete(self) -> bool:
        """True when the model knows everything in its store (nobody else writes it)."""
        ...

    def transaction(self) -> AbstractContextManager[object]:
        """One atomic unit (nested: a savepoint): on an exception nothing in it is kept."""
        ...

    def begin_batch(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Lock ``partitions``' checkpoints of ``topic`` for this transaction; partition ->
        next offset (absent: nothing folded yet)."""
        ...

    def checkpoints(
        self, topic: str, *, lock: bool = False, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        """Stored checkpoints of ``topic`` (only ``partitions`` when given)."""
        ...

    def load_all(
        self,
        object_ids: Iterable[str],
        upload_ids: Iterable[str],
        event_ids: Iterable[str],
        texts: TextCache | None = None,
    ) -> tuple[dict[str, ObjectState], dict[str, Upload], set[str]]:
        """The stored states among ``object_ids`` and ``upload_ids``, and the ``event_ids``
        already applied. ``texts`` may learn the stored text of loaded values."""
        ...

    def write(self, batch: BatchWrite) -> None:
        """Store a folded batch and its checkpoints in the current transaction."""
        ...

    def committed(self) -> None:
        """The transaction holding the last :meth:`write` committed."""
        ...

    def rolled_back(self) -> None:
        """The transaction holding the last :meth:`write` failed."""
        ...

    def memo_reset(self) -> None:
        """Someone else may have written the store: drop what is remembered of it."""
        ...

    @property
    def broken(self) -> bool:
        """The store is unreachable through this model (a lost connection): the caller
        closes it and opens a new one."""
        ...

    def close(self) -> None:
        """Release the model's connection."""
        ...
