"""A source cannot hold a worker, on the real stack: ``blobledger worker`` as a process,
one command stuck reading an HTTP source that went quiet, another with its S3 part
uploads stuck waiting for answers that do not come. SIGTERM ends the process within seconds (it
used to wait for the stalled read to time out, then for the S3 calls), commits neither
command and leaves the multipart upload open; the next worker resumes it."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from blobledger import connect
from blobledger.infra.s3 import make_s3_client
from blobledger.infra.settings import Settings

from .blob_support import LOCAL_ORIGINS, MiB, make_file, open_multipart_uploads, wait_terminal
from .support import Proc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: what the worker gets to wind down after SIGTERM, process exit included
EXIT_WITHIN_SECONDS = 5.0


class QuietOrigin:
    """An HTTP origin on 127.0.0.1 that sends headers and a few bytes of a body, then
    nothing until ``release`` is set."""

    def __init__(self, body: bytes) -> None:
        self.release = threading.Event()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:100])
                self.wfile.flush()
                outer.release.wait(120)
                self.wfile.write(body[100:])

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the worker hung up on us: that is the point

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/quiet.bin"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class ThrottledProxy:
    """TCP in front of S3 at ``rate`` bytes/s each way, whose answers a test can hold:
    requests still go through, but no response comes back and connections stay open, so
    S3 calls hang in their read (botocore waits 120 s) rather than fail."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target, self.rate = target, rate
        self.answering = threading.Event()
        self.answering.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._socks += [client, upstream]
            for a, b, gate in ((client, upstream, None), (upstream, client, self.answering)):
                threading.Thread(target=self._pipe, args=(a, b, gate), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, gate: threading.Event | None) -> None:
        try:
            while data := a.recv(1 << 16):
                if gate is not None:
                    gate.wait()
                b.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self.answering.set()
        self.listener.close()
        for s in self._socks:
            s.close()


@pytest.fixture
def origin() -> Iterator[QuietOrigin]:
    o = QuietOrigin(b"quiet origin " * 100_000)
    yield o
    o.close()


def _parts_done(settings: Settings) -> int:
    s3 = make_s3_client(settings)
    found = 0
    for u in open_multipart_uploads(settings):
        listed = s3.list_parts(Bucket=settings.s3_bucket, Key=u["Key"], UploadId=u["UploadId"])
        found = max(found, len(listed.get("Parts", [])))
    return found


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def test_sigterm_ends_a_worker_stuck_in_a_source_read_and_s3_calls_within_seconds(
    settings: Settings, projector: Any, origin: QuietOrigin, tmp_path: Path
) -> None:
    # the worker's own data dir (hash cache, spool) with the stack's keys; small parts
    # and a 60 s read timeout, so nothing but the signal ends the stalled read
    s = settings.with_(
        data_dir=tmp_path / "w",
        keys_dir=str(settings.keys_path),
        min_part_size=5 * MiB,
        max_in_flight_parts=2,
        source_allow_networks=LOCAL_ORIGINS,
        http_timeout_seconds=60.0,
    )
    target = urlsplit(s.s3_url)
    assert target.hostname is not None and target.port is not None
    proxy = ThrottledProxy((target.hostname, target.port), rate=8 * MiB)
    path = tmp_path / "big.bin"
    sha = make_file(path, 64 * MiB)
    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = Proc(s.with_(s3_endpoint=f"http://127.0.0.1:{proxy.port}"), ["worker"], str(log1))
    try:
        with connect(s, actor="alice") as alice:
            alice.create("robust/quiet")
            alice.create("robust/big")
            quiet = alice.attach_blob("robust/quiet", origin.url)
            big = alice.attach_blob("robust/big", str(path))
            wait_for(lambda: origin.requests == 1, timeout=90, what="the quiet source read")
            wait_for(lambda: _parts_done(s) >= 2, timeout=90, interval=0.05, what="2 parts")
            proxy.answering.clear()  # the parts in flight now hang in their S3 calls
            time.sleep(1.0)

            t0 = time.monotonic()
            first.p.send_signal(signal.SIGTERM)
            first.p.wait(30)
            took = time.monotonic() - t0
            assert took <= EXIT_WITHIN_SECONDS, f"the worker took {took:.1f}s to exit"
            assert first.p.returncode == 0
            (left,) = open_multipart_uploads(s)  # not aborted: resumable
            assert alice.upload(big.upload_id).state == "pending"
            assert alice.upload(quiet.upload_id).state == "pending"
            events = [e.get("event") for e in _log(log1)]
            assert "worker.transfers_left_behind" in events, events

            origin.release.set()
            second = Proc(s, ["worker"], str(log2))
            try:
                stored = wait_terminal(alice, big.upload_id, timeout=180)
                calm = wait_terminal(alice, quiet.upload_id, timeout=180)
            finally:
                second.stop()
        assert (stored.state, stored.sha256) == ("stored", sha)
        assert calm.state == "stored"
    finally:
        first.kill()
        proxy.close()
    assert open_multipart_uploads(s) == []
    resumed = [e for e in _log(log2) if e.get("event") == "multipart.resumed"]
    assert resumed and resumed[0]["parts"] >= 2 and resumed[0]["key"] == left["Key"]
