"""Which offset a worker may commit while several commands run at once (pure).

The commands of one partition finish in any order, but a commit is one offset per
partition that says "every record below this one is done". So the commit point is the
lowest offset still unfinished, or one past the highest taken when none is: never past
an unfinished command. A crash then redelivers every unfinished command, plus finished
ones above the lowest unfinished, which are idempotent (the transfer dedups or resumes,
the outcome keeps its event id).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Advance(Generic[T]):
    """A partition's commit point moved to ``offset``; ``released`` are the items of the
    finished commands it now covers, in offset order (their follow-ups, such as dropping
    a spool entry, are safe once this offset is committed)."""

    offset: int
    released: tuple[T, ...]


@dataclass(slots=True)
class _Partition(Generic[T]):
    #: offset -> item, taken and not finished; dicts keep insertion (= offset) order
    unfinished: dict[int, T] = field(default_factory=dict)
    #: finished above the lowest unfinished: not yet covered by a commit point
    finished: dict[int, T] = field(default_factory=dict)
    #: one past the highest offset taken
    next_offset: int = 0
    #: the last commit point handed out (at first: where consumption started)
    committed: int = 0


class Watermarks(Generic[K, T]):
    """Per partition (any hashable key), the offsets taken and which are finished."""

    def __init__(self) -> None:
        self._parts: dict[K, _Partition[T]] = {}

    def seen(self, key: K, offset: int) -> bool:
        """``offset`` was taken before in this partition (running, or done)."""
        p = self._parts.get(key)
        return p is not None and offset < p.next_offset

    def take(self, key: K, offset: int, item: T) -> None:
        """A command at ``offset`` starts (or waits to); offsets of a partition come in
        increasing order, with gaps allowed."""
        p = self._parts.get(key)
        if p is None:
            p = self._parts[key] = _Partition(committed=offset)
        elif offset < p.next_offset:
            raise ValueError(f"offset {offset} taken after {p.next_offset - 1}")
        p.unfinished[offset] = item
        p.next_offset = offset + 1

    def finish(self, key: K, offset: int) -> None:
        """The command at ``offset`` is done (its outcome acknowledged)."""
        p = self._parts[key]
        p.finished[offset] = p.unfinished.pop(offset)

    def advance(self, key: K) -> Advance[T] | None:
        """The new commit point of ``key``, if it moved since the last one handed out."""
        p = self._parts.get(key)
        if p is None:
            return None
        point = next(iter(p.unfinished), p.next_offset)
        if point <= p.committed:
            return None
        released = tuple(item for offset, item in sorted(p.finished.items()) if offset < point)
        p.finished = {o: item for o, item in p.finished.items() if o >= point}
        p.committed = point
        return Advance(point, released)

    def drop(self, key: K) -> tuple[T, ...]:
        """Forget a partition (revoked or lost); the items still unfinished."""
        p = self._parts.pop(key, None)
        return tuple(p.unfinished.values()) if p is not None else ()

    def unfinished(self, key: K) -> int:
        p = self._parts.get(key)
        return len(p.unfinished) if p is not None else 0

    def keys(self) -> list[K]:
        return list(self._parts)
