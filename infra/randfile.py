"""Files of incompressible bytes for the demo, the tests and the benchmarks.

One random MiB, its first 8 bytes replaced by a per-MiB counter: fast (no random source
per byte), never all in memory, and no two MiBs or two files alike, so nothing dedups or
compresses by accident.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MiB = 1024 * 1024


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` such bytes to ``path`` (parents created); return their SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with path.open("wb") as f:
        done, counter = 0, 0
        while done < size:
            block[:8] = counter.to_bytes(8, "big")
            piece = memoryview(block)[: min(MiB, size - done)]
            f.write(piece)
            digest.update(piece)
            done += len(piece)
            counter += 1
    return digest.hexdigest()
