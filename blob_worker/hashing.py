"""One sequential pass over a local file: the whole-blob SHA-256 and a CRC32 per planned
part (the checksum S3 verifies for each part, ``x-amz-checksum-crc32``).

The file is mapped a window at a time (no copy out of the page cache) and CRC32 runs on
a helper thread over the same windows while SHA-256 runs on the caller's (both release
the GIL): hashing costs max(sha, crc), ~0.9 s per GiB on this machine instead of ~1.6 s
for read + sha + crc in series. At most ``HASH_WINDOWS`` windows are mapped at once,
which bounds the file pages this adds to RSS.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.planning import MiB, Part, PartPlan
from blobledger.blob_worker.sources import LocalFileSource
from blobledger.blob_worker.transfer_types import TransferCancelled

HASH_CHUNK = 16 * MiB
#: mapped windows in flight during the pass (bounds the file pages counted in RSS)
HASH_WINDOWS = 3


def b64_crc(crc: int) -> str:
    """A CRC32 as the ``ChecksumCRC32`` parameter wants it."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


class FileDigest(NamedTuple):
    sha256: str
    #: base64 CRC32 of each planned part, in part order
    crcs: tuple[str, ...]


class _Window:
    """A read-only mapping of ``length`` bytes of a file from ``offset`` (page-aligned
    internally; ``view`` is exactly the requested bytes)."""

    def __init__(self, src: LocalFileSource, offset: int, length: int) -> None:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            self._map = mmap.mmap(
                src.fd,
                length + offset - start,
                prot=mmap.PROT_READ,
                flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                offset=start,
            )
        except (OSError, ValueError) as e:
            raise UploadFailure(
                "unreadable_source", f"cannot map {src.path} at {offset}: {e}"
            ) from e
        self.view = memoryview(self._map)[offset - start :]

    def close(self) -> None:
        self.view.release()
        self._map.close()


def hash_file(
    src: LocalFileSource,
    plan: PartPlan,
    cancel: threading.Event,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_part: Callable[[Part, str], None] | None = None,
) -> FileDigest:
    """Hash ``src`` along ``plan``. ``on_bytes`` sees every window hashed (progress);
    ``on_part`` gets each part with its CRC32 as soon as the part is read, so a caller
    can send it while the pass goes on (it may block: windows stay bounded meanwhile).

    Raises ``truncated_source`` when the file's size changed during the pass."""
    sha = hashlib.sha256()
    crcs: list[str] = []
    state = {"crc": 0}

    def crc_step(view: memoryview) -> None:
        state["crc"] = zlib.crc32(view, state["crc"])

    windows: deque[tuple[Future[None], _Window]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="crc") as crc_pool:
        try:
            for part in plan.parts():
                offset, remaining = part.offset, part.length
                last: Future[None] | None = None
                while remaining:
                    if cancel.is_set():
                        raise TransferCancelled()
                    if len(windows) >= HASH_WINDOWS:
                        done, old = windows.popleft()
                        done.result()
                        old.close()
                    n = min(HASH_CHUNK, remaining)
                    window = _Window(src, offset, n)
                    offset += n
                    remaining -= n
                    last = crc_pool.submit(crc_step, window.view)
                    windows.append((last, window))
                    sha.update(window.view)
                    if on_bytes is not None:
                        on_bytes(n)
                if last is not None:
                    last.result()
                crc = b64_crc(state["crc"])
                state["crc"] = 0
                crcs.append(crc)
                if on_part is not None:
                    on_part(part, crc)
        finally:
            while windows:
                done, old = windows.popleft()
                done.exception()
                old.close()
    if os.fstat(src.fd).st_size != src.size:
        raise UploadFailure("truncated_source", f"{src.path} changed size while hashing")
    return FileDigest(sha.hexdigest(), tuple(crcs))
