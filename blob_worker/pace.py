"""The slowest an http(s) source may be (pure).

A read timeout catches a source that goes silent, not one that drips: a byte every few
seconds never lets a read wait the full timeout, and would hold a transfer (and its
worker slot) for as long as the server likes. So besides the per-read timeout, every
``window`` seconds spent waiting on the source must bring ``bytes_per_second x window``
bytes: a minimum rate, averaged over the window so a burst and a pause are fine.

Only time spent blocked in the source's reads counts: while the transfer does not read
(its part uploads to S3 are the bottleneck), the source is not to blame.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RateFloor:
    """``bytes_per_second`` over each ``window`` of waiting; 0 for either: no floor."""

    bytes_per_second: float
    window: float
    waited: float = 0.0
    received: int = 0

    def observe(self, nbytes: int, seconds: float) -> str | None:
        """Count a read that brought ``nbytes`` after waiting ``seconds``: why the source
        is too slow, or None."""
        if self.bytes_per_second <= 0 or self.window <= 0:
            return None
        self.waited += seconds
        self.received += nbytes
        if self.waited < self.window:
            return None
        if self.received < self.bytes_per_second * self.waited:
            return (
                f"{self.received} bytes in {self.waited:.1f}s of waiting, under the minimum "
                f"of {self.bytes_per_second:g} bytes/s"
            )
        self.waited, self.received = 0.0, 0
        return None
