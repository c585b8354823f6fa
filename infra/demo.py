"""``blobledger demo``: one real path through every part, on the embedded stack.

Brings the stack up, runs a projector and a blob worker as child processes, creates an
object, attaches a generated file (streamed to S3 in parallel parts by the worker),
waits until the read model shows the blob committed, reads the bytes back from S3 and
checks their SHA-256; then attaches a source that cannot be read and shows the
compensation rolling the provisional reference back. It ends with the one step to a system
that keeps running (``blobledger up``) and the commands to try on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blobledger.infra import logging as blog
from blobledger.infra.randfile import write_random_file
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import BlobledgerError, StackError, TimeoutExpired
from blobledger.schemas.views import UploadView

if TYPE_CHECKING:
    from blobledger.producers.client import Client

MiB = 1024 * 1024


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise StackError(
                f"the demo's {self.name} exited with status {self.proc.returncode}",
                service=self.name,
                log_file=str(self.log),
            )


def start_child(settings: Settings, name: str, args: list[str], log_dir: Path) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"demo-{name}.log"
    env = {**os.environ, **settings.to_env(), "BLOBLEDGER_LOG_JSON": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blobledger.infra.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, proc, log)


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    children: list[Child],
    tick: Callable[[], None] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for c in children:
            c.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutExpired(
                f"demo: gave up waiting for {what} after {timeout:.0f}s; "
                f"see the logs in {children[0].log.parent}"
            )
        if tick:
            tick()
        time.sleep(0.1)


def run_demo(settings: Settings, *, size: int, quiet: bool, timeout: float) -> dict[str, Any]:
    from blobledger import connect
    from blobledger.infra.s3 import make_s3_client
    from blobledger.infra.stack.launcher import Stack
    from blobledger.infra.topics import ensure_topics
    from blobledger.projectors.lag import projection_lag

    started = time.monotonic()

    def say(text: str) -> None:
        _say(quiet, text)

    if settings.uses_embedded_stack:
        say(f"starting the embedded stack in {settings.data_dir} ...")
        Stack(settings).up()
    ensure_topics(settings)
    log_dir = settings.data_dir / "logs"
    children = [
        start_child(settings, "projector", ["projector"], log_dir),
        start_child(settings, "worker", ["worker"], log_dir),
    ]
    say(f"projector and blob worker running (logs: {log_dir}/demo-*.log)")
    try:
        with connect(settings, actor="demo") as client:
            key = f"demo/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.bin"
            created = client.create(
                key,
                {"purpose": "blobledger demo", "size_mib": size // MiB},
                tags=["demo"],
                content_type="application/octet-stream",
            )
            say(f"created object {key} ({created.object_id}) at version {created.version}")

            blob_dir = settings.data_dir / "demo"
            blob_dir.mkdir(parents=True, exist_ok=True)
            path = blob_dir / "blob.bin"
            sha = write_random_file(path, size)
            say(f"generated {size / MiB:.0f} MiB file, sha256 {sha[:16]}...")

            attached = client.attach_blob(key, str(path), expected_version=created.version)
            say(f"attached it: upload {attached.upload_id} pending at version {attached.version}")
            t0 = time.monotonic()
            upload = wait_until(
                lambda: _terminal(client, attached.upload_id),
                timeout,
                "the upload to finish",
                children,
            )
            if upload.state != "stored":
                raise BlobledgerError(f"demo upload ended {upload.state}: {upload.reason}")
            seconds = time.monotonic() - t0
            say(
                f"stored in {seconds:.1f}s "
                f"({size / MiB / max(seconds, 1e-9):.0f} MiB/s incl. hand-offs), key {upload.key}"
            )
            obj = client.get(key)
            assert obj.blob is not None and obj.blob.upload_id == attached.upload_id

            # read the bytes back from S3 and check them end to end
            s3 = make_s3_client(settings)
            body = s3.get_object(Bucket=settings.s3_bucket, Key=obj.blob.key)["Body"]
            digest, n = hashlib.sha256(), 0
            for chunk in iter(lambda: body.read(MiB), b""):
                digest.update(chunk)
                n += len(chunk)
            verified = digest.hexdigest() == sha == obj.blob.sha256 and n == size
            say(
                f"read back {n} bytes from S3: sha256 {'matches' if verified else 'DOES NOT MATCH'}"
            )

            # a source that cannot be read: the worker compensates, the fold rolls back
            missing = blob_dir / "does-not-exist.bin"
            bad = client.attach_blob(key, str(missing))
            say(
                f"attached an unreadable source: upload {bad.upload_id} pending "
                f"at version {bad.version}"
            )
            failed = wait_until(
                lambda: _terminal(client, bad.upload_id), timeout, "the compensation", children
            )
            after = client.get(key)
            still_committed = (
                after.blob is not None
                and after.blob.sha256 == sha
                and after.pending_upload_id is None
            )
            say(
                f"compensated ({failed.reason}); "
                f"object still at its committed blob: {still_committed}"
            )
            lag = projection_lag(settings)
            return {
                "object_id": obj.object_id,
                "key": key,
                "version": after.version,
                "sha256": obj.blob.sha256,
                "size": obj.blob.size,
                "s3_key": obj.blob.key,
                "verified": bool(verified and still_committed),
                "upload_seconds": round(seconds, 3),
                "compensated": {
                    "upload_id": failed.upload_id,
                    "reason": failed.reason,
                    "state": failed.state,
                    "object_kept_committed_blob": still_committed,
                },
                "projection_lag": lag,
                "seconds": round(time.monotonic() - started, 3),
            }
    finally:
        for c in children:
            c.stop()


def _terminal(client: Client, upload_id: str) -> UploadView | None:
    """The upload once terminal, else None (short waits, so dead children are noticed)."""
    try:
        return client.wait_upload(upload_id, timeout=0.5)
    except TimeoutExpired:
        return None


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    p = argparse.ArgumentParser(prog="blobledger demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--size-mib", type=int, default=64, help="size of the generated blob (default 64)"
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for each step")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    args = p.parse_args(argv)
    blog.configure()
    settings = settings or Settings.from_env()
    result = run_demo(settings, size=args.size_mib * MiB, quiet=args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(result))
    else:
        print("\nblobledger demo summary")
        for k in (
            "object_id",
            "key",
            "version",
            "sha256",
            "size",
            "s3_key",
            "verified",
            "projection_lag",
            "seconds",
        ):
            print(f"  {k:<15} {result[k]}")
        c = result["compensated"]
        print(f"  {'compensated':<15} upload {c['upload_id']} reason={c['reason']}")
        readme = Path("README.md")  # there after the README's command, run in the checkout
        print(next_step(_command(), "./README.md" if readme.is_file() else "FILE"))
    return 0 if result["verified"] else 1


def _command() -> str:
    """How the user can run ``blobledger``: this venv's script, relative to the working
    directory when it is below it (``.venv/bin/blobledger`` after the README's command)."""
    script = Path(sys.executable).parent / "blobledger"
    if not script.exists():
        return "blobledger"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def next_step(bl: str, source: str) -> str:
    """What to run next (``bl``: the command, ``source``: a file to put): the demo stopped
    its own projector and worker, so the stack it leaves answers nothing until ``up``
    starts supervised ones."""
    return f"""
Next step: the demo stopped its projector and blob worker (the stack still runs).
Keep the whole system running, restarted when a process exits, with:

  {bl} up

then:

  {bl} object create docs/first.txt
  {bl} put docs/first.txt {source}
  {bl} get docs/first.txt -o first-copy.md
  {bl} status          # health, lag, uploads, dead letters; --watch to follow
  {bl} down            # stops the processes, then the stack"""
