"""P5: command -> visible-in-projection latency at a steady command rate, vs raw
produce -> consume latency on the same broker with the same consumer tuning.

Ours: commands (20% creates, 80% metadata updates of created objects) are published at
``--rate`` per second through the client's publisher; each one's clock runs from the
publish call until the read-your-writes waiter has seen its outcome row (a projector
runs in its own process, as deployed). Raw: the same number of messages of the same size
at the same rate, timed from produce() to the consumer's poll() returning them.
ratio = ours p99 / raw p99.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable

from confluent_kafka import TopicPartition

from benchmarks.common import BenchContext, percentile, result
from infra.kafka import make_consumer, make_producer
from infra.settings import Settings
from schemas.codec import default_codec
from schemas.events import Envelope, Event, MetadataUpdated, ObjectCreated, object_id_for


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
            out.append(ObjectCreated(Envelope(object_id=object_id_for("default", k), actor="bench"),
                                     key=k, metadata_json='{"n":0,"title":"latency probe"}'))
        else:
            k = keys[(i * 7919) % len(keys)]
            out.append(MetadataUpdated(Envelope(object_id=object_id_for("default", k), actor="bench"),
                                       patch_json=f'{{"n":{i}}}'))
    return out


def ours(settings: Settings, rate: float, seconds: float, log_path: str) -> list[float]:
    from producers.client import Client

    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBLEDGER_")}
    env.update(settings.to_env())
    env["BLOBLEDGER_LOG_JSON"] = "1"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "projector"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(settings, actor="bench") as client:
            client.create(f"p5/warmup/{uuid.uuid4().hex[:6]}", wait=True)  # group joined, model up
            pub, waiter, topic = client.publisher, client.waiter, settings.events_topic
            lat: list[float] = []
            errors: list[str] = []
            done = threading.Semaphore(0)
            tag = uuid.uuid4().hex[:6]
            warm = _commands(int(rate), tag + "w")
            cmds = _commands(int(rate * seconds), tag)

            def send(events: list[Event], record: bool) -> Callable[[int], None]:
                def one(i: int) -> None:
                    t0 = time.perf_counter()

                    def visible(f: Any) -> None:
                        if f.exception() is None:
                            if record:
                                lat.append(time.perf_counter() - t0)
                        else:
                            errors.append(str(f.exception()))
                        done.release()

                    def acked(f: Any) -> None:
                        if f.exception() is not None:
                            errors.append(str(f.exception()))
                            done.release()
                        else:
                            waiter.expect(f.result()).add_done_callback(visible)

                    pub.publish_async(topic, events[i]).add_done_callback(acked)
                return one

            _paced(rate, len(warm), send(warm, False))
            _paced(rate, len(cmds), send(cmds, True))
            deadline = time.monotonic() + 120
            for _ in range(len(warm) + len(cmds)):
                if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("commands still not visible after 120 s")
            if errors:
                raise RuntimeError(f"{len(errors)} commands failed, e.g. {errors[0]}")
            return lat
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def raw(settings: Settings, rate: float, seconds: float) -> list[float]:
    from infra.topics import ensure_topics

    topic = f"{settings.topic_prefix}.raw"
    ensure_topics(settings, extra=[topic])
    codec = default_codec()
    count = int(rate * seconds)
    warm = int(rate)
    events = _commands(warm + count, uuid.uuid4().hex[:6])
    values = [(e.object_id.encode(), codec.encode(e)) for e in events]
    sent: dict[int, float] = {}
    lat: list[float] = []
    consumer = make_consumer(settings, f"{settings.projector_group}.raw")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    stop = threading.Event()

    def consume() -> None:
        seen = 0
        while not stop.is_set() and seen < warm + count:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    now = time.perf_counter()
                    i = int.from_bytes(m.headers()[0][1], "big")
                    if i >= warm:
                        lat.append(now - sent[i])
                    seen += 1

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    producer = make_producer(settings)
    poller_stop = threading.Event()
    poller = threading.Thread(target=lambda: [producer.poll(0.05) for _ in iter(poller_stop.is_set, True)],
                              daemon=True)
    poller.start()
    time.sleep(1.0)  # let the consumer's first fetch settle

    def send(i: int) -> None:
        key, value = values[i]
        sent[i] = time.perf_counter()
        producer.produce(topic, key=key, value=value, headers=[("seq", i.to_bytes(8, "big"))])

    _paced(rate, warm + count, send)
    producer.flush(60)
    thread.join(120)
    stop.set()
    poller_stop.set()
    consumer.close()
    return lat


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    s = ctx.fresh("p5")
    log_path = str(s.data_dir / f"bench-{s.topic_prefix}-projector.log")
    os.makedirs(s.data_dir, exist_ok=True)
    print("bench P5: raw produce -> consume...", file=sys.stderr)
    r = raw(s, args.rate, args.seconds)
    print("bench P5: command -> visible in projection...", file=sys.stderr)
    o = ours(s, args.rate, args.seconds, log_path)
    ms = lambda v: v * 1000.0  # noqa: E731
    o99, r99 = ms(percentile(o, 99)), ms(percentile(r, 99))
    row = result("P5", f"command -> visible p99 at {args.rate:g} commands/s", o99, r99,
                 "raw produce -> consume p99, same broker", "ms", "<= 1.5", ratio=o99 / r99,
                 extra={"ours_p50_ms": ms(percentile(o, 50)), "ours_p99_ms": o99,
                        "raw_p50_ms": ms(percentile(r, 50)), "raw_p99_ms": r99,
                        "commands": len(o), "raw_messages": len(r), "rate": args.rate,
                        "broker_storage": ctx.broker_storage, "stack": ctx.stack,
                        "projector_log": log_path})
    ctx.drop(s)
    return row
