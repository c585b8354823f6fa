"""P4: p99 of a read-model point lookup while a ``--blob-mib`` (default 1 GiB) upload runs
through a blob worker, vs idle, measured side by side in one run.

A projector and a blob worker run as their own processes (as deployed). ``--blob-mib``
MiB file; ``OBJECTS`` objects are created up front. Then ``ROUNDS`` rounds, each one busy
window and one idle window, in alternating order (idle first in even rounds):

- busy: the file gets new content (so the worker hashes and uploads all of it), the
  client attaches it (``Client.attach_blob``), and from the moment the attach returns
  until the upload is terminal in the read model, lookups run;
- idle: the same worker and projector running with nothing to do, lookups for as long as
  the last busy window lasted.

A lookup is ``Client.get(object_id)`` (``Queries.get``: one indexed row + ACL check) of
an object chosen round-robin, paced at ``RATE`` per second from one thread of a process
of its own (open loop: a late call does not delay the schedule of the next); the
benchmark's process attaches and follows the upload. ratio = busy p99 / idle p99.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import threading
import time
import uuid
from typing import Any

from blobledger.benchmarks.blobs import (
    MiB,
    Services,
    delete_keys,
    freshen,
    make_blob_file,
    mb,
    scratch_dir,
    summarize_ms,
    wait_terminal,
    warm_up,
)
from blobledger.benchmarks.common import BenchContext, result
from blobledger.infra.settings import Settings

OBJECTS = 500
RATE = 200.0  # lookups per second
DEFAULT_ROUNDS = 3
WARM_LOOKUPS = 300


def create_objects(client: Any, settings: Settings, n: int, tag: str) -> list[str]:
    """``n`` objects created by the client's actor, published together, all folded."""
    from blobledger.schemas.events import Envelope, ObjectCreated, object_id_for

    pub = client.publisher
    futures, ids = [], []
    for i in range(n):
        key = f"p4/{tag}/{i:05d}"
        oid = object_id_for(client.tenant, key)
        ids.append(oid)
        ev = ObjectCreated(
            Envelope(object_id=oid, actor=client.actor, tenant=client.tenant),
            key=key,
            metadata_json=f'{{"n":{i},"title":"lookup probe","tags":["a","b"]}}',
            tags=["p4"],
        )
        futures.append(pub.publish_async(settings.events_topic, ev))
    for f in futures:
        client.wait(f.result(timeout=120), timeout=120)
    return ids


def lookups(
    client: Any,
    ids: list[str],
    stop: threading.Event,
    rate: float,
    start_at: int = 0,
    limit: int | None = None,
) -> list[float]:
    """Paced point lookups until ``stop`` (or ``limit`` lookups); their latencies (s)."""
    lat: list[float] = []
    t_start = time.perf_counter()
    i = 0
    while not stop.is_set() and (limit is None or i < limit):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        oid = ids[(start_at + i) % len(ids)]
        t0 = time.perf_counter()
        view = client.get(oid)
        lat.append(time.perf_counter() - t0)
        if view.object_id != oid:
            raise AssertionError(f"lookup of {oid} returned {view.object_id}")
        i += 1
    return lat


class Prober:
    """The lookups run in a process of their own, as a service reading the model would:
    in the benchmark's process they would share its GIL with the threads following the
    upload, and the busy windows would measure the harness instead of the system."""

    def __init__(self, settings: Settings, ids: list[str], rate: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_probe, args=(settings, ids, rate, child), daemon=True)
        self._proc.start()
        self._offset = 0
        self._expect("ready", 180)

    def _expect(self, what: str, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise RuntimeError(
                f"the lookup process did not answer ({what}) in {timeout:.0f} s "
                f"(exit code {self._proc.exitcode})"
            )
        reply = self._conn.recv()
        if isinstance(reply, BaseException):
            raise RuntimeError(f"the lookup process failed: {reply!r}") from reply
        return reply

    def start(self) -> None:
        self._conn.send(self._offset)

    def stop(self) -> list[float]:
        self._conn.send("stop")
        lat: list[float] = self._expect("latencies", 60)
        self._offset += len(lat)
        return lat

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


def _stop_on_message(conn: Any, stop: threading.Event) -> None:
    conn.recv()
    stop.set()


def _probe(settings: Settings, ids: list[str], rate: float, conn: Any) -> None:
    """The lookup process: warm up, then one paced window per start/stop pair."""
    from blobledger import connect

    try:
        with connect(settings, actor="bench") as client:
            lookups(client, ids, threading.Event(), rate, limit=WARM_LOOKUPS)  # warm, discarded
            conn.send("ready")
            while (start_at := conn.recv()) is not None:
                stop = threading.Event()
                waiter = threading.Thread(target=_stop_on_message, args=(conn, stop), daemon=True)
                waiter.start()
                lat = lookups(client, ids, stop, rate, start_at=start_at)
                waiter.join()
                conn.send(lat)
    except Exception as e:
        conn.send(e)


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    from blobledger import connect

    mib = args.blob_mib
    rounds = max(1, int(getattr(args, "blob_rounds", None) or DEFAULT_ROUNDS))
    rate = float(getattr(args, "lookup_rate", None) or RATE)
    s = ctx.fresh("p4")
    tag = uuid.uuid4().hex[:6]
    scratch = scratch_dir(s)
    path = scratch / f"{s.topic_prefix}.bin"
    print(
        f"bench P4: writing a {mib} MiB file, starting a projector and a worker...", file=sys.stderr
    )
    make_blob_file(path, mib * MiB)
    idle: list[float] = []
    busy: list[float] = []
    windows: list[dict[str, Any]] = []
    stored_keys: list[str] = []
    services = Services(s, s.topic_prefix)
    try:
        with connect(s, actor="bench") as client, contextlib.ExitStack() as cleanup:
            warm_up(client, services, scratch, f"p4/{tag}/warm")
            ids = create_objects(client, s, OBJECTS, tag)
            prober = Prober(s, ids, rate)
            cleanup.callback(prober.close)
            upload_key = f"p4/{tag}/upload"
            client.create(upload_key, wait=True)
            last_busy = 10.0

            def idle_window() -> None:
                t0 = time.perf_counter()
                prober.start()
                time.sleep(last_busy)
                lat = prober.stop()
                idle.extend(lat)
                windows.append(
                    {"kind": "idle", "s": round(time.perf_counter() - t0, 2), "lookups": len(lat)}
                )

            def busy_window() -> None:
                nonlocal last_busy
                freshen(path)
                r = client.attach_blob(upload_key, str(path), wait=False)
                upload_id = r.upload_id
                assert upload_id is not None
                t0 = time.perf_counter()
                prober.start()
                try:
                    view, _ = wait_terminal(
                        client, upload_id, timeout=1800, poll=0.05, services=services
                    )
                finally:
                    lat = prober.stop()
                elapsed = time.perf_counter() - t0
                if view.state != "stored" or view.dedup:
                    raise RuntimeError(
                        f"the busy upload ended {view.state} (dedup={view.dedup}): {view.reason}"
                    )
                stored_keys.append(view.key)
                busy.extend(lat)
                last_busy = elapsed
                done = services.completed().get(upload_id, {})
                windows.append(
                    {
                        "kind": "busy",
                        "s": round(elapsed, 2),
                        "lookups": len(lat),
                        "worker_mbps": round(mb(mib * MiB) / (done["duration_ms"] / 1000.0), 1)
                        if done.get("duration_ms")
                        else None,
                    }
                )

            for i in range(rounds):
                order = (idle_window, busy_window) if i % 2 == 0 else (busy_window, idle_window)
                for step in order:
                    step()
                    w = windows[-1]
                    print(
                        f"bench P4: round {i + 1}/{rounds} {w['kind']:4s} {w['s']:6.1f} s "
                        f"{w['lookups']} lookups",
                        file=sys.stderr,
                    )
    finally:
        worker_rss = services.stop()
        path.unlink(missing_ok=True)
        delete_keys(s, stored_keys)
    i_stats, b_stats = summarize_ms(idle), summarize_ms(busy)
    ratio = b_stats["p99_ms"] / i_stats["p99_ms"]
    row = result(
        "P4",
        f"p99 read-model point lookup (Client.get, {rate:g}/s paced) during a {mib} MiB "
        f"upload through a worker process vs idle, {rounds} alternating rounds",
        b_stats["p99_ms"],
        i_stats["p99_ms"],
        "same lookups, idle (worker and projector running, no upload)",
        "ms",
        "<= 1.5",
        ratio=ratio,
        extra={
            "busy_p99_ms": b_stats["p99_ms"],
            "idle_p99_ms": i_stats["p99_ms"],
            "busy_p50_ms": b_stats["p50_ms"],
            "idle_p50_ms": i_stats["p50_ms"],
            "busy_max_ms": b_stats["max_ms"],
            "idle_max_ms": i_stats["max_ms"],
            "busy_lookups": b_stats["n"],
            "idle_lookups": i_stats["n"],
            "objects": OBJECTS,
            "blob_mib": mib,
            "rounds": rounds,
            "windows": windows,
            "worker_peak_rss_mb": worker_rss / 1e6,
            "broker_storage": ctx.broker_storage,
            "stack": ctx.stack,
            "worker_log": str(services.worker_log),
        },
    )
    ctx.drop(s)
    return row
