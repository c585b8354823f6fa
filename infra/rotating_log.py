"""A size-capped log file for a supervised process's output: ``name.log`` plus
``name.log.1`` .. ``name.log.<backups>``, oldest dropped.

The supervisor pipes each child's output through one of these, so a projector that runs
for months (or a crash loop that logs a traceback a second) never fills the disk, and the
file rotates while the child keeps writing to its pipe. Files are created 0600 like every
other file in the data dir (infra/stack/private.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from blobledger.infra.stack.private import make_private_dir, open_private_append

#: per file; with the backups, a process's logs stay under (backups + 1) x this
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3


class RotatingLog:
    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._closed = False
        make_private_dir(path.parent)
        self._fd = open_private_append(path)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:  # a grandchild holding the pipe may outlive its parent
                return
            if self._size and self._size + len(data) >= self.max_bytes:
                self._rotate()
            os.write(self._fd, data)
            self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                os.replace(newer, older)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self._fd = open_private_append(self.path)
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


def trim(path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
    """Rotate ``path`` now if it is over ``max_bytes``: for a file another process is
    about to append to directly (the detached supervisor's own output)."""
    log = RotatingLog(path, max_bytes=max_bytes, backups=backups)
    try:
        log.write(b"")  # rotates when over the cap
    finally:
        log.close()
