"""Upload sources: local files and http(s) URLs, read as streams, never loaded whole.

A command names its source, and whoever can publish a command is not trusted with the
worker's rights, so opening a source is where the boundary holds (:mod:`.sourcepolicy`):

* a file is read only under the upload's source roots, and only a regular file: what
  the path names is checked (``lstat``) before it is opened, so a FIFO, a device, a
  socket or a directory is refused unopened (opening some devices acts, and opening a
  FIFO waits for a writer). The open itself is ``O_NOFOLLOW | O_NONBLOCK`` (no symlink as
  the last component; a FIFO swapped in after the check cannot block the worker in
  ``open``), ``fstat`` checks the type again before a byte is read, and the real path of
  the *opened descriptor* must lie under a root, so neither a symlinked directory nor a
  path swapped after the first check gets through;
* an http(s) URL is fetched only from vetted addresses (:mod:`.netguard`), by connecting
  to the address vetted (the name is resolved once) with the name kept for Host and SNI,
  following redirects hop by hop, each hop vetted again; a credential comes from the
  worker's settings and goes to its own host only, never from the URL.

An http(s) source cannot hold a transfer either: each read waits at most the timeout
(``http_timeout_seconds``: silent that long is ``source_timeout``), and a body that
trickles in slower than the policy's ``min_rate`` over each such window fails the same
way (:mod:`.pace`), as a drip of a byte every few seconds never trips a read timeout.
Reads take what one ``recv`` brings, so that rule is checked as the bytes arrive, and a
cancel (:mod:`.cancel`) shuts the socket down to wake a blocked read at once.

Source errors become project errors here, so the transfer only sees two kinds:
:class:`UploadFailure` (a compensation reason: missing, forbidden, not a regular file,
HTTP 404, truncated, silent or too slow...) and :class:`TransientError` (5xx, resets,
unreachable: worth retrying). Messages carry :func:`redact_url` forms only.

HTTP uses urllib3 (already a botocore dependency) with ``Accept-Encoding: identity`` so
the bytes hashed and stored are the resource's bytes, not a transfer encoding of them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    IncompleteRead,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from blobledger.blob_worker import netguard
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.pace import RateFloor
from blobledger.blob_worker.sourcepolicy import SourcePolicy, under_any
from blobledger.blob_worker.transfer_types import TransferCancelled
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
    ctime cannot be set from user space, so a rewrite always changes it). ``path`` is the
    real path of the opened file."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NOFOLLOW
    | os.O_NONBLOCK
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def descriptor_path(fd: int) -> str:
    """The real path of what ``fd`` has open (Linux ``/proc``, macOS ``F_GETPATH``). Where
    neither exists the worker cannot verify a file, so it refuses it."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        import fcntl

        getpath = getattr(fcntl, "F_GETPATH", None)
        if getpath is None:
            raise UploadFailure(
                "source_forbidden", "cannot tell where an opened file lives on this system"
            ) from None
        raw = fcntl.fcntl(fd, getpath, bytes(1024))
        path = os.fsdecode(raw.split(b"\0", 1)[0])
    return path.removesuffix(" (deleted)")


def _forbidden(path: str) -> UploadFailure:
    return UploadFailure(
        "source_forbidden",
        f"{path} is outside the worker's source roots (an operator configures "
        "source_roots; clients spool other files)",
    )


def _refuse_unless_regular(path: str) -> None:
    """What ``path`` names, before it is opened: a regular file, or an UploadFailure."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as e:
        raise UploadFailure("source_not_found", f"no such file: {path}") from e
    except OSError as e:
        raise UploadFailure("unreadable_source", f"cannot stat {path}: {e.strerror}") from e
    if stat.S_ISLNK(st.st_mode):
        raise UploadFailure("source_forbidden", f"{path} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise UploadFailure(
            "source_not_regular", f"{path} is {_kind(st.st_mode)}, not a regular file"
        )


def open_under_roots(path: str, roots: Sequence[str]) -> tuple[int, os.stat_result, str]:
    """Open ``path`` for reading if it is a regular file under one of ``roots``: the
    descriptor, its stat and its real path. The checks, in order: where the path leads
    before anything is opened (a device or FIFO elsewhere is never even opened); what the
    path names (anything but a regular file is refused unopened); an open that follows no
    final symlink and cannot block; the descriptor's type (the path may have been swapped
    since); the real path of the descriptor (the authority: it covers symlinked
    directories and swapped paths)."""
    if not os.path.isabs(path):
        raise UploadFailure("invalid_command", f"file source {path!r} is not an absolute path")
    real_roots = [os.path.realpath(r) for r in roots]
    if not real_roots:
        raise UploadFailure(
            "source_forbidden",
            f"{path}: this worker reads no local files (no source_roots configured)",
        )
    if not under_any(os.path.realpath(path), real_roots):
        raise _forbidden(path)
    _refuse_unless_regular(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as e:
        raise UploadFailure("source_not_found", f"no such file: {path}") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UploadFailure("source_forbidden", f"{path} is a symbolic link") from e
        if e.errno in (errno.ENXIO, errno.ENODEV):
            raise UploadFailure("source_not_regular", f"{path} is not a regular file") from e
        raise UploadFailure("unreadable_source", f"cannot open {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UploadFailure(
                "source_not_regular", f"{path} is {_kind(st.st_mode)}, not a regular file"
            )
        real = descriptor_path(fd)
        if not under_any(real, real_roots):
            raise _forbidden(path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st, real


class LocalFileSource:
    """A regular file under ``roots``, opened once; the descriptor pins the inode even if
    the path is replaced while we upload."""

    seekable = True

    def __init__(self, uri: str, path: str, roots: Sequence[str]) -> None:
        self.uri = uri
        self.path = path
        #: whether the stat cache should remember this file's hash
        self.cacheable = True
        fd, st, real = open_under_roots(path, roots)
        self.fd = fd
        self.size: int | None = st.st_size
        self.identity = FileIdentity(
            real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
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


def _host_header(host: str, port: int, scheme: str) -> str:
    name = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    return name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"


class GuardedHttp:
    """GETs that reach only vetted addresses. One per transfer: it keeps a few
    keep-alive pools, one per (scheme, vetted address, port, name)."""

    def __init__(
        self,
        policy: SourcePolicy,
        *,
        resolver: netguard.Resolver = netguard.system_resolver,
        ca_certs: str | None = None,
        max_pools: int = 16,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._ca_certs = ca_certs
        self._max_pools = max_pools
        self._pools: OrderedDict[tuple[str, str, int, str], HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, timeout: float) -> urllib3.BaseHTTPResponse:
        """The response to GET ``url`` after following at most ``max_redirects``
        redirects, each target checked (:func:`netguard.redirect_target`) and its address
        vetted before it is fetched."""
        hops = 0
        while True:
            resp = self._get_once(url, timeout)
            if resp.status not in netguard.REDIRECT_STATUSES:
                return resp
            location = resp.headers.get("Location")
            _discard(resp)
            if hops >= self.policy.max_redirects:
                raise UploadFailure(
                    "http_error",
                    f"GET {netguard.redact_url(url)}: more than "
                    f"{self.policy.max_redirects} redirects",
                )
            url = netguard.redirect_target(url, location)
            hops += 1

    def _get_once(self, url: str, timeout: float) -> urllib3.BaseHTTPResponse:
        shown = netguard.redact_url(url)
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
            credentials = parts.username is not None or parts.password is not None
        except ValueError as e:
            raise UploadFailure("invalid_command", f"malformed URL {shown}") from e
        if parts.scheme not in ("http", "https") or not host:
            raise UploadFailure("invalid_command", f"unsupported source {shown}")
        if credentials:
            raise UploadFailure(
                "source_forbidden",
                f"{shown}: credentials in a source URL are refused; an operator gives the "
                "worker a header for the host instead (source_headers)",
            )
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = netguard.vetted_addresses(
            host, port, self.policy.allow_networks, self._resolver
        )
        headers = {
            **self.policy.headers_for(host, port),
            "Host": _host_header(host, port, parts.scheme),
            "Accept-Encoding": "identity",
        }
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        failure: Exception | None = None
        for address in addresses:
            pool = self._pool(parts.scheme, address, port, host)
            try:
                return pool.urlopen(
                    "GET",
                    target,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    timeout=urllib3.Timeout(connect=min(10.0, timeout), read=timeout),
                )
            except (NewConnectionError, ConnectTimeoutError) as e:
                failure = e  # the next vetted address, if any
            except ReadTimeoutError as e:
                raise UploadFailure(
                    "source_timeout", f"GET {shown}: no response within {timeout:g}s"
                ) from e
            except SSLError as e:
                raise UploadFailure("http_error", f"GET {shown}: TLS failed: {e}") from e
            except ProtocolError as e:
                raise TransientError(f"GET {shown}: {e}") from e
            except HTTPError as e:
                raise UploadFailure("unreadable_source", f"GET {shown}: {e}") from e
        raise TransientError(f"GET {shown}: cannot connect: {failure}") from failure

    def _pool(self, scheme: str, address: str, port: int, host: str) -> HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            if scheme == "https":
                pool = HTTPSConnectionPool(
                    address,
                    port,
                    maxsize=4,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=self._ca_certs,
                    server_hostname=host,  # SNI
                    assert_hostname=host,  # the certificate names the host, not the address
                )
            else:
                pool = HTTPConnectionPool(address, port, maxsize=4)
            self._pools[key] = pool
            while len(self._pools) > self._max_pools:
                _, old = self._pools.popitem(last=False)
                old.close()
            return pool

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


class HttpSource:
    """One GET, streamed. Content-Length (when sent) is the size; a body that ends early
    is ``truncated_source``; a server silent for ``timeout`` seconds, or slower than the
    policy's ``min_rate`` bytes/s over such a window, is ``source_timeout``."""

    seekable = False

    def __init__(self, uri: str, http: GuardedHttp, timeout: float) -> None:
        self.uri = netguard.redact_url(uri)  # the form messages (and so events) carry
        self._timeout = timeout
        self._floor = RateFloor(http.policy.min_rate, timeout)
        self._interrupted = False
        resp = http.get(uri, timeout)
        status = resp.status
        if status >= 300:
            _discard(resp)
            if status in (404, 410):
                raise UploadFailure("source_not_found", f"GET {self.uri}: HTTP {status}")
            if status >= 500 or status in (408, 429):
                raise TransientError(f"GET {self.uri}: HTTP {status}")
            raise UploadFailure("http_error", f"GET {self.uri}: HTTP {status}")
        self._resp = resp
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        self.size: int | None = int(length) if length and length.isdigit() and not encoded else None
        self._read = 0
        self._ended = False

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` as far as the stream allows (short only at its end), taking what
        each ``recv`` brings so the rate floor sees every arrival."""
        done = 0
        try:
            while done < len(buf):
                started = time.monotonic()
                chunk = self._resp.read1(len(buf) - done)
                slow = self._floor.observe(len(chunk), time.monotonic() - started)
                self._check_interrupted()
                if slow is not None:
                    raise UploadFailure("source_timeout", f"GET {self.uri}: too slow: {slow}")
                if not chunk:
                    self._ended = True
                    break
                buf[done : done + len(chunk)] = chunk
                done += len(chunk)
        except (IncompleteRead, ProtocolError) as e:
            self._check_interrupted(e)
            raise UploadFailure(
                "truncated_source",
                f"GET {self.uri}: body ended before its announced {self.size} bytes: {e}",
            ) from e
        except (ReadTimeoutError, TimeoutError) as e:
            self._check_interrupted(e)
            raise UploadFailure(
                "source_timeout",
                f"GET {self.uri}: nothing received for {self._timeout:g}s "
                f"after {self._read + done} bytes",
            ) from e
        except (ConnectionError, HTTPError) as e:
            self._check_interrupted(e)
            raise TransientError(f"GET {self.uri}: {e}") from e
        self._read += done
        if done < len(buf) and self.size is not None and self._read < self.size:
            raise UploadFailure(
                "truncated_source",
                f"GET {self.uri}: body ended after {self._read} of {self.size} bytes",
            )
        return done

    def interrupt(self) -> None:
        """Wake a read blocked on the socket, from another thread (a cancel): the socket
        is shut down for reading, so the read ends at once, as :class:`TransferCancelled`
        rather than as a broken source."""
        self._interrupted = True
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # released or closed
            self._resp.shutdown()

    def _check_interrupted(self, cause: BaseException | None = None) -> None:
        if self._interrupted:
            raise TransferCancelled() from cause

    def close(self) -> None:
        if self._ended and not self._interrupted:
            self._resp.release_conn()  # read to its end: the connection can be reused
        else:
            _discard(self._resp)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Give a response's connection up without reading the rest of its body (a
    redirect's or an error's body may be endless): closed, not reused."""
    resp.close()
    resp.release_conn()


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
    uri: str,
    *,
    policy: SourcePolicy,
    upload_id: str,
    http: GuardedHttp | None = None,
    timeout: float = 30.0,
) -> LocalFileSource | HttpSource:
    """Open ``uri`` (a path, ``file://``, ``http://`` or ``https://``) for reading, within
    what ``policy`` lets upload ``upload_id`` read."""
    path = local_path(uri)
    if path is not None:
        if not path:
            raise UploadFailure("invalid_command", "empty source path")
        roots = policy.roots_for(upload_id)
        src = LocalFileSource(uri, path, roots)
        # a spool entry's path is used once: the stat cache gains nothing from it
        src.cacheable = not under_any(src.identity.path, roots[len(policy.roots) :])
        return src
    if uri.startswith(("http://", "https://")):
        return HttpSource(uri, http or GuardedHttp(policy), timeout)
    raise UploadFailure("invalid_command", f"unsupported source {netguard.redact_url(uri)!r}")
