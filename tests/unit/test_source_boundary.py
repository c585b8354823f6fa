"""Opening sources within the worker's source policy: local files only under the roots
(against symlinks, swapped paths, FIFOs, devices), http(s) only from vetted addresses,
with redirects, timeouts and source credentials handled by the guard. Local HTTP servers
listen on 127.0.0.2, which the tests allow; 127.0.0.1 stays forbidden."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from blobledger.blob_worker import sources
from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.netguard import parse_networks
from blobledger.blob_worker.pace import RateFloor
from blobledger.blob_worker.sourcepolicy import SourcePolicy, within
from blobledger.blob_worker.sources import GuardedHttp, HttpSource, open_source, open_under_roots
from blobledger.blob_worker.transfer_types import TransferCancelled

ALLOWED = "127.0.0.2"


def _reason(fn: Callable[[], Any]) -> str:
    with pytest.raises(UploadFailure) as e:
        fn()
    return e.value.reason


# --- root containment (pure) ----------------------------------------------------------------
@pytest.mark.parametrize(
    "path, root, inside",
    [
        ("/data/in/a.bin", "/data/in", True),
        ("/data/in/sub/a.bin", "/data/in", True),
        ("/data/in", "/data/in", True),
        ("/data/inbox/a.bin", "/data/in", False),
        ("/data/a.bin", "/data/in", False),
        ("/etc/shadow", "/", True),
    ],
)
def test_within_is_by_path_components(path: str, root: str, inside: bool) -> None:
    assert within(path, root) is inside


def test_a_spool_entry_is_a_root_of_its_own_upload_only() -> None:
    policy = SourcePolicy(roots=("/data/in",), spool="/var/spool/bl")
    mine = str(uuid.uuid4())
    assert policy.roots_for(mine) == ("/data/in", f"/var/spool/bl/{mine}")
    assert policy.roots_for("../../etc") == ("/data/in",)  # not an upload id: no spool root


# --- local files ----------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "ok.bin").write_bytes(b"inside")
    return r


def test_a_regular_file_under_a_root_opens(root: Path) -> None:
    fd, st, real = open_under_roots(str(root / "ok.bin"), [str(root)])
    try:
        assert os.read(fd, 100) == b"inside" and st.st_size == 6
        assert real == os.path.realpath(root / "ok.bin")
    finally:
        os.close(fd)


def test_files_outside_the_roots_are_refused_unopened(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    assert _reason(lambda: open_under_roots("/etc/passwd", [str(root)])) == "source_forbidden"
    assert _reason(lambda: open_under_roots(str(outside), [str(root)])) == "source_forbidden"
    # a missing file outside the roots says nothing about its existence
    missing = str(tmp_path / "missing.bin")
    assert _reason(lambda: open_under_roots(missing, [str(root)])) == "source_forbidden"
    assert _reason(lambda: open_under_roots(str(root / "nope"), [str(root)])) == "source_not_found"
    assert _reason(lambda: open_under_roots(str(root / "ok.bin"), [])) == "source_forbidden"
    assert _reason(lambda: open_under_roots("ok.bin", [str(root)])) == "invalid_command"


def test_symlinks_are_refused(root: Path) -> None:
    (root / "to-passwd").symlink_to("/etc/passwd")
    (root / "to-inside").symlink_to(root / "ok.bin")
    for name in ("to-passwd", "to-inside"):  # O_NOFOLLOW: no final symlink at all
        assert _reason(lambda n=name: open_under_roots(str(root / n), [str(root)])) == (
            "source_forbidden"
        )


def test_the_opened_descriptor_decides_even_if_the_path_check_is_raced(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory symlink swapped in after the path check: the first check is fooled
    (realpath made to see nothing), the descriptor's real path is not."""
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    monkeypatch.setattr(sources.os.path, "realpath", lambda p: os.path.normpath(p))
    path = str(root / "etc" / "passwd")
    assert _reason(lambda: open_under_roots(path, [str(root)])) == "source_forbidden"


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    out: dict[str, Any] = {}

    def attempt() -> None:
        try:
            open_under_roots(str(fifo), [str(root)])
        except UploadFailure as e:
            out["reason"] = e.reason

    t0 = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "open() blocked on a FIFO with no writer"
    assert out["reason"] == "source_not_regular" and time.monotonic() - t0 < 1


def test_directories_and_devices_are_not_regular_files(root: Path) -> None:
    assert _reason(lambda: open_under_roots(str(root), [str(root)])) == "source_not_regular"
    with pytest.raises(UploadFailure, match="character device") as e:
        open_under_roots("/dev/null", ["/dev"])
    assert e.value.reason == "source_not_regular"


@pytest.mark.parametrize(
    "kind, shown",
    [
        ("fifo", "a FIFO"),
        ("socket", "a socket"),
        ("directory", "a directory"),
        ("device", "a character device"),
    ],
)
def test_what_is_not_a_regular_file_is_refused_before_it_is_opened(
    root: Path, monkeypatch: pytest.MonkeyPatch, kind: str, shown: str
) -> None:
    """Opening is already acting on some files (a FIFO waits for a writer, a tape device
    rewinds): what the path names is checked first."""
    roots = [str(root)]
    path = str(root / kind)
    with contextlib.ExitStack() as held:
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            sock = held.enter_context(socket.socket(socket.AF_UNIX))
            sock.bind(path)
        elif kind == "directory":
            os.mkdir(path)
        else:
            path, roots = "/dev/zero", ["/dev"]
        opened: list[str] = []
        real_open = sources.os.open

        def recording_open(p: str, *args: Any, **kw: Any) -> int:
            opened.append(p)
            return real_open(p, *args, **kw)

        monkeypatch.setattr(sources.os, "open", recording_open)
        with pytest.raises(UploadFailure) as e:
            open_under_roots(path, roots)
    assert e.value.reason == "source_not_regular"
    assert f"is {shown}, not a regular file" in e.value.detail
    assert opened == []


def test_a_fifo_swapped_in_after_the_check_cannot_block_the_open(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path names a regular file when checked and a FIFO when opened (a race the
    requester can run): the open must not wait for a writer (O_NONBLOCK), and the
    descriptor's own type refuses it."""
    (root / "regular").write_bytes(b"x")
    fifo = root / "pipe"
    os.mkfifo(fifo)
    regular = os.lstat(root / "regular")
    monkeypatch.setattr(sources.os, "lstat", lambda p: regular)
    out: dict[str, Any] = {}

    def attempt() -> None:
        try:
            open_under_roots(str(fifo), [str(root)])
        except UploadFailure as e:
            out["failure"] = e

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    try:
        assert not thread.is_alive(), "open() blocked on a FIFO with no writer"
    finally:
        # release a blocked open(), so the thread does not outlive the test
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert out["failure"].reason == "source_not_regular" and "a FIFO" in out["failure"].detail


def test_open_source_reads_only_this_uploads_spool_entry(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    for uid in (mine, other):
        (spool / uid).mkdir(parents=True)
        (spool / uid / "f.bin").write_bytes(uid.encode())
    policy = SourcePolicy(spool=os.path.realpath(spool))
    src = open_source((spool / mine / "f.bin").as_uri(), policy=policy, upload_id=mine)
    try:
        assert not src.cacheable  # type: ignore[union-attr]  # a spool path is used once
    finally:
        src.close()
    stolen = (spool / other / "f.bin").as_uri()
    assert _reason(lambda: open_source(stolen, policy=policy, upload_id=mine)) == (
        "source_forbidden"
    )


# --- http(s) --------------------------------------------------------------------------------
class Server:
    """An HTTP(S) server on ``host`` answering from ``routes`` (path -> handler) and
    recording each request's path and headers."""

    def __init__(
        self,
        routes: dict[str, Callable[[BaseHTTPRequestHandler], None]],
        host: str = ALLOWED,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        outer = self
        self.requests: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers.items())))
                routes.get(self.path, lambda h: h.send_error(404))(self)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def body(data: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return send


def redirect(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return send


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


def _policy(**kw: Any) -> SourcePolicy:
    return SourcePolicy(allow_networks=parse_networks(f"{ALLOWED}/32"), **kw)


def _read_all(src: HttpSource) -> bytes:
    buf = bytearray(1 << 16)
    out = b""
    while n := src.readinto(memoryview(buf)):
        out += bytes(buf[:n])
    src.close()
    return out


def test_the_vetted_address_is_connected_with_the_name_as_host(servers: list[Server]) -> None:
    srv = Server({"/blob": body(b"payload")})
    servers.append(srv)
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return [ALLOWED]

    http = GuardedHttp(_policy(), resolver=resolver)
    src = HttpSource(f"http://files.example:{srv.port}/blob", http, 5.0)
    assert _read_all(src) == b"payload" and src.size == 7
    assert lookups == ["files.example"]  # resolved once: no second answer to rebind to
    assert srv.requests[0][1]["Host"] == f"files.example:{srv.port}"


def test_loopback_is_refused_without_the_allow_list(servers: list[Server]) -> None:
    srv = Server({"/blob": body(b"secret")}, host="127.0.0.1")
    servers.append(srv)
    http = GuardedHttp(SourcePolicy())
    for url in (f"http://127.0.0.1:{srv.port}/blob", f"http://localhost:{srv.port}/blob"):
        assert _reason(lambda u=url: HttpSource(u, http, 5.0)) == "source_forbidden"
    assert srv.requests == []


def test_a_redirect_to_a_forbidden_address_is_refused(servers: list[Server]) -> None:
    inner = Server({"/secret": body(b"internal")}, host="127.0.0.1")
    outer = Server({"/r": redirect(f"http://127.0.0.1:{inner.port}/secret")})
    servers += [inner, outer]
    http = GuardedHttp(_policy())
    assert _reason(lambda: HttpSource(f"http://{ALLOWED}:{outer.port}/r", http, 5.0)) == (
        "source_forbidden"
    )
    assert inner.requests == []  # never contacted


def test_redirects_are_followed_hop_by_hop_and_bounded(servers: list[Server]) -> None:
    srv = Server({"/a": redirect("/b"), "/b": body(b"there"), "/loop": redirect("/loop")})
    servers.append(srv)
    http = GuardedHttp(_policy())
    assert _read_all(HttpSource(f"http://{ALLOWED}:{srv.port}/a", http, 5.0)) == b"there"
    assert _reason(lambda: HttpSource(f"http://{ALLOWED}:{srv.port}/loop", http, 5.0)) == (
        "http_error"
    )
    assert sum(p == "/loop" for p, _ in srv.requests) == 1 + http.policy.max_redirects
    srv_file = Server({"/f": redirect("file:///etc/passwd")})
    servers.append(srv_file)
    assert _reason(lambda: HttpSource(f"http://{ALLOWED}:{srv_file.port}/f", http, 5.0)) == (
        "source_forbidden"
    )


def test_a_source_credential_goes_to_its_own_host_only(servers: list[Server]) -> None:
    srv = Server({"/r": body(b"")})
    servers.append(srv)
    srv_routes = {"/start": redirect(f"http://other.example:{srv.port}/r")}
    start = Server(srv_routes)
    servers.append(start)
    policy = _policy(headers=(("files.example", "Authorization", "Bearer t0k3n"),))
    http = GuardedHttp(policy, resolver=lambda h, p: [ALLOWED])
    _read_all(HttpSource(f"http://files.example:{start.port}/start", http, 5.0))
    assert start.requests[0][1].get("Authorization") == "Bearer t0k3n"
    assert "Authorization" not in srv.requests[0][1]


def test_credentials_in_the_url_are_refused_and_never_echoed() -> None:
    http = GuardedHttp(_policy())
    with pytest.raises(UploadFailure) as e:
        HttpSource(f"http://user:t0k3n@{ALLOWED}:9/x", http, 5.0)
    assert e.value.reason == "source_forbidden" and "t0k3n" not in str(e.value)


def test_a_silent_source_times_out(servers: list[Server]) -> None:
    def silent(h: BaseHTTPRequestHandler) -> None:
        time.sleep(3)

    def stalls(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        time.sleep(3)

    srv = Server({"/silent": silent, "/stalls": stalls})
    servers.append(srv)
    http = GuardedHttp(_policy())
    t0 = time.monotonic()
    assert _reason(lambda: HttpSource(f"http://{ALLOWED}:{srv.port}/silent", http, 0.5)) == (
        "source_timeout"
    )
    src = HttpSource(f"http://{ALLOWED}:{srv.port}/stalls", http, 0.5)
    assert _reason(lambda: _read_all(src)) == "source_timeout"
    assert time.monotonic() - t0 < 2.5


def _trickle(total: int, chunk: int, every: float) -> Callable[[BaseHTTPRequestHandler], None]:
    """``total`` bytes announced, sent ``chunk`` bytes at a time, ``every`` seconds apart."""

    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(total))
        h.end_headers()
        for start in range(0, total, chunk):
            h.wfile.write(b"d" * min(chunk, total - start))
            h.wfile.flush()
            time.sleep(every)

    return send


def test_a_slow_drip_fails_by_the_minimum_rate(servers: list[Server]) -> None:
    """A byte every 0.1 s never lets one read wait the 0.5 s timeout, so before the rate
    floor this would have held the transfer for the whole 1000 bytes (100 s)."""
    srv = Server({"/drip": _trickle(1000, 1, 0.1)})
    servers.append(srv)
    src = HttpSource(f"http://{ALLOWED}:{srv.port}/drip", GuardedHttp(_policy(min_rate=1024)), 0.5)
    t0 = time.monotonic()
    with pytest.raises(UploadFailure) as e:
        _read_all(src)
    assert e.value.reason == "source_timeout" and "too slow" in e.value.detail
    assert time.monotonic() - t0 < 3


def test_the_timeouts_bound_each_read_and_the_rate_not_the_whole_body(
    servers: list[Server],
) -> None:
    """2 s of steady 80 KiB/s through a 0.5 s read timeout: slow overall, fine per read
    and above the floor, so it is read to its end."""
    srv = Server({"/steady": _trickle(20 * 8192, 8192, 0.1)})
    servers.append(srv)
    src = HttpSource(
        f"http://{ALLOWED}:{srv.port}/steady", GuardedHttp(_policy(min_rate=1024)), 0.5
    )
    assert _read_all(src) == b"d" * 20 * 8192


def test_the_rate_floor_counts_only_time_spent_waiting() -> None:
    floor = RateFloor(bytes_per_second=100, window=1.0)
    assert floor.observe(10, 0.5) is None  # within the window: nothing to say yet
    assert floor.observe(200, 0.6) is None  # 210 bytes in 1.1 s: fine, a new window
    assert floor.observe(50, 0.9) is None
    why = floor.observe(0, 0.2)  # 50 bytes in 1.1 s of waiting
    assert why is not None and "50 bytes in 1.1s" in why
    assert RateFloor(0, 1.0).observe(0, 100.0) is None  # no floor


def test_a_cancel_wakes_a_read_blocked_on_the_socket(servers: list[Server]) -> None:
    release = threading.Event()

    def stalls(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        release.wait(30)

    srv = Server({"/stalls": stalls})
    servers.append(srv)
    src = HttpSource(f"http://{ALLOWED}:{srv.port}/stalls", GuardedHttp(_policy()), 30.0)
    threading.Timer(0.3, src.interrupt).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TransferCancelled):
            _read_all(src)
    finally:
        release.set()
    assert time.monotonic() - t0 < 2  # not the 30 s read timeout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_to_the_vetted_address_keeps_sni_and_checks_the_name(
    servers: list[Server], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=files.example"),
            *("-addext", "subjectAltName=DNS:files.example"),
        ],
        check=True,
        capture_output=True,
    )
    seen: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]
    srv = Server({"/blob": body(b"over tls")}, tls=ctx)
    servers.append(srv)
    http = GuardedHttp(_policy(), resolver=lambda h, p: [ALLOWED], ca_certs=str(cert))
    src = HttpSource(f"https://files.example:{srv.port}/blob", http, 5.0)
    assert _read_all(src) == b"over tls" and seen == ["files.example"]
    # the certificate must name the host asked for, whatever address it was reached at
    wrong = GuardedHttp(_policy(), resolver=lambda h, p: [ALLOWED], ca_certs=str(cert))
    assert _reason(lambda: HttpSource(f"https://other.example:{srv.port}/blob", wrong, 5.0)) == (
        "http_error"
    )
