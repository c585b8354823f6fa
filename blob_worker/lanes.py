"""One command at a time per object (pure).

Commands are keyed by object id, so an object's commands reach one worker in log order;
running them concurrently could let a later attach finish (or fail) before an earlier
one, or two transfers of one upload race on its multipart upload. A lane per object
keeps them in order while other objects' commands run beside them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Lanes(Generic[K, T]):
    """For each busy key, the items waiting behind the one running."""

    def __init__(self) -> None:
        self._waiting: dict[K, deque[T]] = {}

    def admit(self, key: K, item: T) -> bool:
        """True: ``item`` may run now (its key is busy from here on); False: it waits
        behind what runs or waits for ``key`` already."""
        queue = self._waiting.get(key)
        if queue is not None:
            queue.append(item)
            return False
        self._waiting[key] = deque()
        return True

    def release(self, key: K) -> T | None:
        """What ran for ``key`` is over: the next item to run for it (the key stays busy),
        or None (the key is free)."""
        queue = self._waiting[key]
        if queue:
            return queue.popleft()
        del self._waiting[key]
        return None

    def discard(self, drop: Callable[[T], bool]) -> list[T]:
        """Remove the waiting items ``drop`` selects (their partition was revoked)."""
        dropped: list[T] = []
        for queue in self._waiting.values():
            kept = [x for x in queue if not drop(x)]
            dropped += [x for x in queue if drop(x)]
            queue.clear()
            queue.extend(kept)
        return dropped

    def busy(self, key: K) -> bool:
        return key in self._waiting

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())
