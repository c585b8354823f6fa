"""Helpers for the blob-path integration tests: workers, an HTTP origin, an S3 proxy."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from blobledger.infra.randfile import write_random_file
from blobledger.infra.s3 import make_s3_client
from blobledger.infra.settings import Settings
from blobledger.infra.testing.services import ThreadedWorker  # noqa: F401 - re-exported for the tests

MiB = 1024 * 1024
#: what the worker must be allowed to reach for the tests' local HTTP origins: it refuses
#: loopback for a client unless settings allow it (source_allow_networks)
LOCAL_ORIGINS = "127.0.0.1/32"


def make_file(path: Path, size: int) -> str:
    """A file of incompressible bytes, unlike any other; its sha256."""
    return write_random_file(path, size)


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def wait_terminal(client: Any, upload_id: str, timeout: float = 120.0) -> Any:
    """Client.wait_upload with the tests' shorter default bound."""
    return client.wait_upload(upload_id, timeout=timeout)


def open_multipart_uploads(settings: Settings) -> list[dict[str, Any]]:
    s3 = make_s3_client(settings)
    return s3.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])


class Origin:
    """An HTTP server on ``host`` (default 127.0.0.1) serving ``root`` plus misbehaving
    paths: /404, /500 (always), /truncate/<name> (announces the full length, sends half),
    and ``redirects`` (path -> Location, answered with a 302)."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", redirects: dict[str, str] | None = None
    ) -> None:
        outer = self
        self.redirects = redirects if redirects is not None else {}

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/500":
                    self.send_error(500, "origin broken")
                    return
                if self.path.startswith("/truncate/"):
                    data = (root / self.path.removeprefix("/truncate/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                super().do_GET()

        self.hits: dict[str, int] = {}
        self.server = ThreadingHTTPServer((host, 0), partial(Handler, directory=str(root)))
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """A TCP forwarder in front of S3 that a test can cut (an S3 outage as the worker sees
    it) without stopping the SeaweedFS the broker may keep its log in."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self.up.clear()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self._conns.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
