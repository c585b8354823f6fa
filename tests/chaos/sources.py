"""Blob sources for the chaos load: files of several sizes, served from disk and over a
local HTTP origin, plus sources that fail (a missing file, HTTP 500, an origin that stalls).

Each :class:`Source` says what the upload must end as, so the final check can tell a
failing source that was stored (a bug) from a good one compensated by the chaos (counted).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from blobledger.infra.randfile import write_random_file

KiB = 1024
MiB = 1024 * KiB
#: a few KiB to tens of MiB; the 5 MiB part size makes the larger ones multipart
SIZES = (4 * KiB, 64 * KiB, 700 * KiB, 3 * MiB, 7 * MiB, 12 * MiB, 24 * MiB)
#: how often each size is picked (small ones often, the largest rarely)
SIZE_WEIGHTS = (6, 5, 4, 3, 2, 2, 1)
FAILING = ("missing-file", "http-500", "http-stall")


@dataclass(frozen=True)
class Source:
    """One upload source: ``kind`` is file | http | missing-file | http-500 | http-stall."""

    kind: str
    location: str
    sha256: str | None = None
    size: int | None = None

    @property
    def good(self) -> bool:
        """The bytes can be read: the upload should be stored (chaos may compensate it)."""
        return self.kind in ("file", "http")


class Origin:
    """A local HTTP server: ``/files/<name>`` serves the blob files, ``/500`` always fails,
    ``/stall/<name>`` announces the whole file, sends its first half and then goes silent
    until closed (the worker's read timeout must turn that into a compensation)."""

    def __init__(self, root: Path) -> None:
        closing = self.closing = threading.Event()

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/500":
                    self.send_error(500, "origin broken on purpose")
                    return
                if self.path.startswith("/stall/"):
                    data = (root / self.path.removeprefix("/stall/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                    except OSError:
                        return
                    closing.wait(300)
                    return
                if self.path.startswith("/files/"):
                    self.path = self.path.removeprefix("/files")
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class Catalog:
    """The blob files (one per size, distinct bytes) and a seeded way to pick a source."""

    def __init__(self, root: Path, origin_url: str) -> None:
        self.root = root
        self.origin_url = origin_url
        self.files: list[Source] = []
        for size in SIZES:
            name = f"blob-{size}.bin"
            sha = write_random_file(root / name, size)
            self.files.append(Source("file", str(root / name), sha, size))

    def _http(self, f: Source) -> Source:
        return Source("http", f"{self.origin_url}/files/{Path(f.location).name}", f.sha256, f.size)

    def pick(self, rng: random.Random) -> Source:
        """Mostly good sources (local or HTTP, sized by ``SIZE_WEIGHTS``), one in five failing."""
        roll = rng.random()
        f = rng.choices(self.files, weights=SIZE_WEIGHTS)[0]
        if roll < 0.40:
            return f
        if roll < 0.80:
            return self._http(f)
        return self.failing(rng.choices(FAILING, weights=(1, 1, 1))[0], rng)

    def failing(self, kind: str, rng: random.Random) -> Source:
        if kind == "missing-file":
            return Source(kind, str(self.root / f"missing-{rng.randrange(10**6)}.bin"))
        if kind == "http-500":
            return Source(kind, f"{self.origin_url}/500")
        small = self.files[rng.randrange(3)]
        return Source(kind, f"{self.origin_url}/stall/{Path(small.location).name}")
