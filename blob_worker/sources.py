"""Upload sources: local files and http(s) URLs, read as streams, never loaded whole.

Source errors become project errors here, so the transfer only sees two kinds:
:class:`UploadFailure` (a compensation reason: missing, unreadable, HTTP 404,
truncated...) and :class:`TransientError` (5xx, timeouts, resets: worth retrying).

HTTP uses urllib3 (already a botocore dependency) with ``Accept-Encoding: identity`` so
the bytes hashed and stored are the resource's bytes, not a transfer encoding of them.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import (
    HTTPError,
    IncompleteRead,
    ProtocolError,
    ReadTimeoutError,
)

from blobledger.blob_worker.failures import UploadFailure
from blobledger.schemas.errors import TransientError


class Source(Protocol):
    """A sequential byte stream with an optional size known up front."""

    uri: str
    size: int | None

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` as far as the stream allows; fewer bytes only at end of stream."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What must be unchanged for a cached hash of a file to still hold (git-index style:
    ctime cannot be set from user space, so a rewrite always changes it)."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


class LocalFileSource:
    """A regular file, opened once; the descriptor pins the inode even if the path is
    replaced while we upload."""

    seekable = True

    def __init__(self, uri: str, path: str) -> None:
        self.uri = uri
        self.path = path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise UploadFailure("source_not_found", f"no such file: {path}") from e
        except (PermissionError, IsADirectoryError) as e:
            raise UploadFailure("unreadable_source", f"cannot open {path}: {e.strerror}") from e
        except OSError as e:
            raise UploadFailure("unreadable_source", f"cannot open {path}: {e}") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UploadFailure("unreadable_source", f"{path} is not a regular file")
        self.fd = fd
        self.size: int | None = st.st_size
        self.identity = FileIdentity(
            os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
        )
        self._pos = 0

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self.fd, length, offset)
        except OSError as e:
            raise UploadFailure("unreadable_source", f"read of {self.path} failed: {e}") from e

    def readinto_at(self, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` from ``offset``; short only at end of file."""
        done = 0
        try:
            while done < len(buf):
                n = os.preadv(self.fd, [buf[done:]], offset + done)
                if n == 0:
                    break
                done += n
        except OSError as e:
            raise UploadFailure("unreadable_source", f"read of {self.path} failed: {e}") from e
        return done

    def readinto(self, buf: memoryview) -> int:
        n = self.readinto_at(buf, self._pos)
        self._pos += n
        return n

    def slice(self, offset: int, length: int) -> FileSlice:
        return FileSlice(self, offset, length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileSlice(io.RawIOBase):
    """A part of a file as a seekable request body: botocore reads it in socket-sized
    pieces straight from the page cache, so a part costs no part-sized buffer (this is
    what keeps a 1 GiB upload's RSS far below in-flight x part size)."""

    def __init__(self, source: LocalFileSource, offset: int, length: int) -> None:
        super().__init__()
        self._source, self._offset, self._length, self._pos = source, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        data = self._source.read_at(self._offset + self._pos, size)
        if not data:
            raise UploadFailure("truncated_source", f"{self._source.path} shrank while uploading")
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(0, base + offset), self._length)
        return self._pos

    def tell(self) -> int:
        return self._pos


class HttpSource:
    """One GET, streamed. Content-Length (when sent) is the size; a body that ends early
    is ``truncated_source``."""

    seekable = False

    def __init__(self, uri: str, pool: urllib3.PoolManager, timeout: float) -> None:
        self.uri = uri
        self._pool = pool
        try:
            resp = pool.request(
                "GET",
                uri,
                preload_content=False,
                redirect=True,
                retries=urllib3.Retry(
                    total=0, redirect=5, raise_on_redirect=False, raise_on_status=False
                ),
                headers={"Accept-Encoding": "identity"},
                timeout=urllib3.Timeout(connect=min(10.0, timeout), read=timeout),
            )
        except (
            ReadTimeoutError,
            ProtocolError,
            urllib3.exceptions.NewConnectionError,
            urllib3.exceptions.ConnectTimeoutError,
            urllib3.exceptions.MaxRetryError,
        ) as e:
            raise TransientError(f"GET {uri}: {e}") from e
        except HTTPError as e:
            raise UploadFailure("unreadable_source", f"GET {uri}: {e}") from e
        status = resp.status
        if status >= 300:
            resp.release_conn()
            if status in (404, 410):
                raise UploadFailure("source_not_found", f"GET {uri}: HTTP {status}")
            if status >= 500 or status in (408, 429):
                raise TransientError(f"GET {uri}: HTTP {status}")
            raise UploadFailure("http_error", f"GET {uri}: HTTP {status}")
        self._resp = resp
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        self.size: int | None = int(length) if length and length.isdigit() and not encoded else None
        self._read = 0

    def readinto(self, buf: memoryview) -> int:
        done = 0
        try:
            while done < len(buf):
                n = self._resp.readinto(buf[done:])
                if not n:
                    break
                done += n
        except (IncompleteRead, ProtocolError) as e:
            raise UploadFailure(
                "truncated_source",
                f"GET {self.uri}: body ended before its announced {self.size} bytes: {e}",
            ) from e
        except (ReadTimeoutError, TimeoutError, ConnectionError) as e:
            raise TransientError(f"GET {self.uri}: {e}") from e
        except HTTPError as e:
            raise TransientError(f"GET {self.uri}: {e}") from e
        self._read += done
        if done < len(buf) and self.size is not None and self._read < self.size:
            raise UploadFailure(
                "truncated_source",
                f"GET {self.uri}: body ended after {self._read} of {self.size} bytes",
            )
        return done

    def close(self) -> None:
        self._resp.release_conn()


def local_path(uri: str) -> str | None:
    """The filesystem path of a ``file://`` URI or plain path; None for anything else."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise UploadFailure("unreadable_source", f"{uri}: file URIs must name a local file")
        return unquote(parts.path)
    if "://" in uri:
        return None
    return uri


def open_source(
    uri: str, *, http: urllib3.PoolManager | None = None, timeout: float = 30.0
) -> LocalFileSource | HttpSource:
    """Open ``uri`` (a path, ``file://``, ``http://`` or ``https://``) for reading."""
    path = local_path(uri)
    if path is not None:
        if not path:
            raise UploadFailure("invalid_command", "empty source path")
        return LocalFileSource(uri, path)
    if uri.startswith(("http://", "https://")):
        return HttpSource(uri, http or default_pool(), timeout)
    raise UploadFailure("invalid_command", f"unsupported source {uri!r}")


_POOL: urllib3.PoolManager | None = None


def default_pool() -> urllib3.PoolManager:
    """One pool per process: keep-alive connections to the same origin are reused."""
    global _POOL
    if _POOL is None:
        _POOL = urllib3.PoolManager(num_pools=16, maxsize=4)
    return _POOL
