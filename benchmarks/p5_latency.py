"""P5: command -> visible-in-projection latency at a steady command rate, vs raw
produce -> consume latency on the same broker with the same consumer tuning.

Ours: commands (20% creates, 80% metadata updates of created objects) are published at
``--rate`` per second through the client's publisher; each one's clock runs from the
publish call until the read-your-writes waiter has seen its outcome row (a projector
runs in its own process, as deployed). Raw: the same number of messages of the same size
at the same rate, timed from produce() to the consumer's poll() returning them.

The broker's own latency drifts (Tansu on S3 stalls now and then), so the two sides run in
``ROUNDS`` alternating windows (raw first in even rounds) on one stack, each side's
latencies pooled. ratio = ours p99 / raw p99.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

from blobledger.benchmarks.common import BenchContext, percentile, result
from blobledger.infra.kafka import header_bytes, make_consumer, make_producer
from blobledger.infra.settings import Settings
from blobledger.projectors.waiter import OutcomeWaiter
from blobledger.schemas.codec import default_codec
from blobledger.schemas.events import Envelope, Event, MetadataUpdated, ObjectCreated, object_id_for


def _paced(rate: float, count: int, send: Callable[[int], None]) -> None:
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)


def _commands(count: int, tag: str) -> list[Event]:
    keys: list[str] = []
    out: list[Event] = []
    for i in range(count):
        if i % 5 == 0 or not keys:
            k = f"p5/{tag}/{i:07d}"
            keys.append(k)
            out.append(
                ObjectCreated(
                    Envelope(object_id=object_id_for("default", k), actor="bench"),
                    key=k,
                    metadata_json='{"n":0,"title":"latency probe"}',
                )
            )
        else:
            k = keys[(i * 7919) % len(keys)]
            out.append(
                MetadataUpdated(
                    Envelope(object_id=object_id_for("default", k), actor="bench"),
                    patch_json=f'{{"n":{i}}}',
                )
            )
    return out


ROUNDS = 3


class Ours:
    """A projector process and a client: commands published, timed until visible."""

    def __init__(self, settings: Settings, log_path: str) -> None:
        from blobledger import connect

        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
        env.update(settings.to_env())
        env["BLOBLEDGER_LOG_JSON"] = "1"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "blobledger.infra.cli", "projector"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.client = connect(settings, actor="bench")
        self.client.create(f"p5/warmup/{uuid.uuid4().hex[:6]}", wait=True)  # group joined, model up
        # the client's outcome port only blocks; timing many commands in flight needs the
        # concrete waiter's futures (its thread and connection warm in the first window)
        self.waiter = OutcomeWaiter(settings)
        self.topic = settings.events_topic
        self.lat: list[float] = []
        self.acks: list[float] = []

    def window(self, rate: float, seconds: float, *, record: bool = True) -> None:
        pub, waiter = self.client.publisher, self.waiter
        errors: list[str] = []
        done = threading.Semaphore(0)
        cmds = _commands(int(rate * seconds), uuid.uuid4().hex[:6])

        def one(i: int) -> None:
            t0 = time.perf_counter()

            def visible(f: Any) -> None:
                if f.exception() is None:
                    if record:
                        self.lat.append(time.perf_counter() - t0)
                else:
                    errors.append(str(f.exception()))
                done.release()

            def acked(f: Any) -> None:
                if f.exception() is not None:
                    errors.append(str(f.exception()))
                    done.release()
                else:
                    if record:
                        self.acks.append(time.perf_counter() - t0)
                    waiter.expect(f.result()).add_done_callback(visible)

            pub.publish_async(self.topic, cmds[i]).add_done_callback(acked)

        _paced(rate, len(cmds), one)
        deadline = time.monotonic() + 120
        for _ in cmds:
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("commands still not visible after 120 s")
        if errors:
            raise RuntimeError(f"{len(errors)} commands failed, e.g. {errors[0]}")

    def close(self) -> None:
        self.waiter.close()
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Raw:
    """A producer and a consumer thread on a topic of its own: produce -> poll latency."""

    def __init__(self, settings: Settings) -> None:
        from blobledger.infra.topics import ensure_topics

        self.topic = f"{settings.topic_prefix}.raw"
        ensure_topics(settings, extra=[self.topic])
        self.codec = default_codec()
        self.sent: dict[int, tuple[float, bool]] = {}
        self.seq = 0
        self.seen = 0
        self.lat: list[float] = []
        self.acks: list[float] = []
        self.consumer = make_consumer(settings, f"{settings.projector_group}.raw")
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in range(settings.partitions)])
        self.producer = make_producer(settings)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._consume, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]
        for th in self.threads:
            th.start()
        time.sleep(1.0)  # let the consumer's first fetch settle

    def _consume(self) -> None:
        # as the projector polls (projectors.runner.Projector.poll_batch): wait for the first
        # message, then take what is already fetched; consume(n, timeout) alone would hold
        # messages until n arrived or the timeout passed
        while not self.stop.is_set():
            first = self.consumer.poll(0.2)
            if first is None:
                continue
            for m in [first, *self.consumer.consume(999, 0)]:
                if m.error() is None:
                    now = time.perf_counter()
                    seq = header_bytes(m.headers(), "seq")
                    if seq is None:
                        raise RuntimeError("raw: a message without its seq header")
                    t0, record = self.sent[int.from_bytes(seq, "big")]
                    if record:
                        self.lat.append(now - t0)
                    self.seen += 1

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.producer.poll(0.05)

    def window(self, rate: float, seconds: float, *, record: bool = True) -> None:
        events = _commands(int(rate * seconds), uuid.uuid4().hex[:6])
        values = [(e.object_id.encode(), self.codec.encode(e)) for e in events]
        base = self.seq
        self.seq += len(values)

        def send(j: int) -> None:
            i = base + j
            key, value = values[j]
            t0 = time.perf_counter()
            self.sent[i] = (t0, record)

            def acked(err: Any, _msg: Any) -> None:
                if err is None and record:
                    self.acks.append(time.perf_counter() - t0)

            self.producer.produce(
                self.topic,
                key=key,
                value=value,
                headers=[("seq", i.to_bytes(8, "big"))],
                on_delivery=acked,
            )

        _paced(rate, len(values), send)
        self.producer.flush(60)
        deadline = time.monotonic() + 120
        while self.seen < self.seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw: {self.seq - self.seen} messages not consumed after 120 s")
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(5)
        self.consumer.close()


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    s = ctx.fresh("p5")
    log_path = str(s.data_dir / f"bench-{s.topic_prefix}-projector.log")
    os.makedirs(s.data_dir, exist_ok=True)
    rounds = max(1, int(getattr(args, "latency_rounds", None) or ROUNDS))
    per = args.seconds / rounds
    raw, ours = Raw(s), Ours(s, log_path)
    try:
        for side in (raw, ours):  # one second each, discarded: connections and caches warm
            side.window(args.rate, 1.0, record=False)
        for i in range(rounds):
            for name, side in (
                (("raw", raw), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("raw", raw))
            ):
                print(
                    f"bench P5: round {i + 1}/{rounds} {name} {per:.1f} s at {args.rate:g}/s...",
                    file=sys.stderr,
                )
                side.window(args.rate, per)
    finally:
        ours.close()
        raw.close()
    ms = lambda v: v * 1000.0  # noqa: E731
    o99, r99 = ms(percentile(ours.lat, 99)), ms(percentile(raw.lat, 99))
    row = result(
        "P5",
        f"command -> visible p99 at {args.rate:g} commands/s, {rounds} alternating rounds",
        o99,
        r99,
        "raw produce -> consume p99, same broker",
        "ms",
        "<= 1.5",
        ratio=o99 / r99,
        extra={
            "ours_p50_ms": ms(percentile(ours.lat, 50)),
            "ours_p99_ms": o99,
            "raw_p50_ms": ms(percentile(raw.lat, 50)),
            "raw_p99_ms": r99,
            # produce -> broker ack, both sides: what the broker alone costs
            "ours_ack_p50_ms": ms(percentile(ours.acks, 50)),
            "ours_ack_p99_ms": ms(percentile(ours.acks, 99)),
            "raw_ack_p50_ms": ms(percentile(raw.acks, 50)),
            "raw_ack_p99_ms": ms(percentile(raw.acks, 99)),
            "commands": len(ours.lat),
            "raw_messages": len(raw.lat),
            "rate": args.rate,
            "rounds": rounds,
            "broker_storage": ctx.broker_storage,
            "stack": ctx.stack,
            "projector_log": log_path,
        },
    )
    ctx.drop(s)
    return row
