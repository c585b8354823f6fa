"""Shared pieces of the blob benchmarks (P3, P4, P6): the test file, the projector and
blob worker as separate processes (as deployed), their peak RSS, the worker's own
account of each upload (its JSON log), and waiting for an upload to become terminal in
the read model.

The pure helpers (:func:`vm_hwm_bytes`, :func:`completed_uploads`, :func:`median`,
:func:`summarize_ms`) are unit-tested in ``tests/unit/test_bench_blob.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from blobledger.benchmarks.common import SCRATCH_SUBDIR, percentile
from blobledger.infra.randfile import write_random_file
from blobledger.infra.settings import Settings

MiB = 1024 * 1024
TERMINAL = ("stored", "compensated", "orphaned")


# --- pure helpers ---------------------------------------------------------------------------------
def vm_hwm_bytes(status_text: str) -> int | None:
    """Peak resident set size ("VmHWM: 123 kB") from a ``/proc/<pid>/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                unit = parts[2].lower() if len(parts) > 2 else "kb"
                return int(parts[1]) * {"kb": 1024, "mb": MiB, "b": 1}.get(unit, 1024)
    return None


def completed_uploads(lines: Iterable[str]) -> dict[str, dict[str, Any]]:
    """upload id -> the worker's ``upload.completed`` log record (JSON lines; other lines
    and unparseable ones are skipped). The last record of an upload id wins (a redelivered
    command logs again)."""
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{") or "upload.completed" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "upload.completed" and rec.get("upload_id"):
            out[str(rec["upload_id"])] = rec
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50 / p99 / max in milliseconds and the count of latencies given in seconds."""
    return {
        "p50_ms": percentile(seconds, 50) * 1000.0,
        "p99_ms": percentile(seconds, 99) * 1000.0,
        "max_ms": (max(seconds) * 1000.0) if seconds else float("nan"),
        "n": len(seconds),
    }


def mb(size: int) -> float:
    """Bytes -> MB (10^6, the unit of the MB/s figures)."""
    return size / 1e6


# --- the test file --------------------------------------------------------------------------------
def make_blob_file(path: Path, size: int) -> Path:
    """``size`` bytes of incompressible content at ``path``."""
    write_random_file(path, size)
    return path


def freshen(path: Path) -> None:
    """New content (so a new SHA-256: nothing dedups) and a new mtime (so no stat-cache
    hit), without evicting the file from the page cache."""
    with open(path, "r+b") as f:
        f.write(os.urandom(16))
    # a coarse timestamp clock could give the same mtime as a very recent write
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, max(st.st_mtime_ns, time.time_ns())))


# --- processes ------------------------------------------------------------------------------------
def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
    env.update(settings.to_env())
    env.update({"BLOBLEDGER_LOG_JSON": "1", "BLOBLEDGER_LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


def peak_rss_of(pid: int) -> int | None:
    """The kernel's peak RSS of a live process (Linux), else None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return vm_hwm_bytes(f.read())
    except OSError:
        return None


class RssWatch:
    """Peak RSS of a process: the kernel's high-water mark (VmHWM, sampled every 50 ms and
    at the end, so a process that exits on its own is covered), else psutil samples.

    Not ``ru_maxrss`` of a child: Linux carries the parent's RSS at fork over the exec
    into the child's ``ru_maxrss`` (exec_mmap keeps the old mm's high-water mark), so a
    child of a 120 MB benchmark process would report >= 120 MB whatever it does."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"rss-{pid}")
        self._thread.start()

    def _loop(self) -> None:
        try:
            import psutil

            proc = psutil.Process(self.pid)
        except Exception:
            return
        while not self._stop.wait(0.05):
            try:
                self.sampled = max(self.sampled, proc.memory_info().rss, peak_rss_of(self.pid) or 0)
            except Exception:
                return

    def peak(self) -> int:
        hwm = peak_rss_of(self.pid)
        return max(hwm or 0, self.sampled)

    def stop(self) -> int:
        value = self.peak()
        self._stop.set()
        self._thread.join(1)
        return value


class Services:
    """A projector and a blob worker, each its own process (``python -m infra.cli ...``),
    logging JSON to files under ``settings.data_dir``."""

    def __init__(
        self,
        settings: Settings,
        tag: str,
        *,
        worker_args: Sequence[str] = (),
        projector: bool = True,
    ) -> None:
        self.settings = settings
        self.logs = Path(settings.data_dir) / "bench-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.worker_log = self.logs / f"{tag}-worker.log"
        self.projector_log = self.logs / f"{tag}-projector.log"
        env = child_env(settings)
        self.procs: list[subprocess.Popen[bytes]] = []
        if projector:
            self.procs.append(self._start(["projector"], self.projector_log, env))
        self.worker = self._start(["worker", *worker_args], self.worker_log, env)
        self.procs.append(self.worker)
        self.rss = RssWatch(self.worker.pid)

    @staticmethod
    def _start(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "blobledger.infra.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                name = "projector" if p is not self.worker else "worker"
                raise RuntimeError(
                    f"the {name} process exited with {p.returncode}; see {self.logs}"
                )

    def completed(self) -> dict[str, dict[str, Any]]:
        with open(self.worker_log, errors="replace") as f:
            return completed_uploads(f)

    def stop(self) -> int:
        """Stop both; returns the worker's peak RSS in bytes."""
        peak = self.rss.stop()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return peak

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_terminal(
    client: Any,
    upload_id: str,
    *,
    timeout: float,
    poll: float = 0.005,
    services: Services | None = None,
) -> tuple[Any, float]:
    """Poll the read model until the upload is terminal; (its view, perf_counter then)."""
    from blobledger.schemas.errors import NotFoundError

    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while time.monotonic() < deadline:
        try:
            view = client.upload(upload_id)
            if view.state in TERMINAL:
                return view, time.perf_counter()
        except NotFoundError:
            pass
        if services is not None and time.monotonic() - checked > 1.0:
            services.check()
            checked = time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"upload {upload_id} not terminal after {timeout:.0f}s")


def warm_up(client: Any, services: Services, scratch: Path, key: str) -> None:
    """One small upload end to end: the worker has joined its group, the projector folds,
    every connection is open."""
    small = make_blob_file(scratch / f"{key.replace('/', '_')}.warm", 64 * 1024)
    try:
        client.create(key, wait=True)
        r = client.attach_blob(key, str(small), wait=False)
        assert r.upload_id is not None
        view, _ = wait_terminal(client, r.upload_id, timeout=180, services=services)
        if view.state != "stored":
            raise RuntimeError(f"warm-up upload ended {view.state}: {view.reason}")
    finally:
        small.unlink(missing_ok=True)


def delete_keys(settings: Settings, keys: Iterable[str]) -> None:
    """Free what a benchmark stored (best effort)."""
    from blobledger.infra.s3 import make_s3_client

    s3 = make_s3_client(settings)
    for key in {k for k in keys if k}:
        try:
            s3.delete_object(Bucket=settings.s3_bucket, Key=key)
        except Exception as e:
            print(f"bench: could not delete {key}: {e}", file=sys.stderr)


def scratch_dir(settings: Settings) -> Path:
    d = Path(settings.data_dir).resolve() / SCRATCH_SUBDIR  # a source root (BenchContext.fresh)
    d.mkdir(parents=True, exist_ok=True)
    return d
