"""P3: blob worker upload MB/s vs boto3 ``upload_file`` (16 MiB parts, 8 threads), on the
same file and the same S3, measured side by side in one run.

Each round uploads the same ``--blob-mib`` file (default 1 GiB, in the page cache) once per
side, every side in a fresh process (imports and client set-up are not timed; the clock
runs around the upload call only), in an order that rotates per round:

- baseline: ``boto3.client("s3").upload_file`` with ``TransferConfig(multipart_chunksize=
  16 MiB, max_concurrency=8)`` (path-style addressing, which SeaweedFS needs, and a
  16-connection pool so 8 threads never wait for a socket; everything else stock);
- ours: the worker's transfer wired as ``Worker.create`` wires it (same S3 client factory,
  options from settings: 16 MiB parts, 8 in flight, CRC32 per part, filer-rename
  promotion), in its default local-file mode ``hash_first``: SHA-256 + per-part CRC32 of
  the whole file first, then a parallel multipart upload straight to the content key;
- ``stream`` (extra field, not the headline): ``--local-files stream``, hashing while
  uploading to ``staging/<upload_id>``, then a SeaweedFS filer rename to the content key.

Before every upload the file's first 16 bytes are rewritten, so every upload is new
content (nothing dedups, no hash-cache hit) while the file stays in the page cache; each
uploaded object is deleted afterwards. ours / baseline = median MB/s over the rounds.

Peak RSS: each upload process reports its ``ru_maxrss``; and once per run a real
``blobledger worker --max-commands 1`` process transfers the same-size blob from an
``UploadRequested`` command and its peak RSS is the kernel's high-water mark (VmHWM),
sampled while it runs (the target, < 200 MB, is judged on that process). Not ru_maxrss:
a child's starts at its parent's RSS at fork.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from blobledger.benchmarks.blobs import (
    MiB,
    RssWatch,
    child_env,
    completed_uploads,
    delete_keys,
    freshen,
    make_blob_file,
    mb,
    median,
    peak_rss_of,
    scratch_dir,
)
from blobledger.benchmarks.common import BenchContext, result
from blobledger.infra.settings import Settings

MODES = ("base", "hash_first", "stream")
DEFAULT_ROUNDS = 5
RSS_TARGET = 200 * 10**6  # bytes (the design's "< 200 MB")
BASELINE_NAME = "boto3 upload_file 16MiB x8"


# --- one upload in a fresh process ---------------------------------------------------------
def _child(mode: str, path: str, key: str) -> dict[str, Any]:
    settings = Settings.from_env()
    if mode == "base":
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        s3 = boto3.client(
            "s3",
            endpoint_url=settings.s3_url,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
        )
        config = TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=8)
        c0 = os.times()
        t0 = time.perf_counter()
        s3.upload_file(path, settings.s3_bucket, key, Config=config)
        dt = time.perf_counter() - t0
        out: dict[str, Any] = {"key": key, "bytes_sent": os.path.getsize(path)}
    else:
        from blobledger.blob_worker.hashcache import HashCache
        from blobledger.blob_worker.promotion import promoter_for
        from blobledger.blob_worker.transfer import Progress, Transfer, TransferOptions, UploadSpec
        from blobledger.infra.retry import CircuitBreaker
        from blobledger.infra.s3 import make_s3_client

        # exactly Worker.create's wiring, without the Kafka clients
        transfer = Transfer(
            make_s3_client(settings),
            TransferOptions.from_settings(settings, local_files=mode),
            breaker=CircuitBreaker("s3", failure_threshold=5, reset_timeout=5.0),
            hash_cache=HashCache(),
        )
        transfer.promoter = promoter_for(settings, transfer)
        phases: dict[str, float] = {}

        def progress(p: Progress) -> None:
            phases.setdefault(p.state, time.perf_counter())

        c0 = os.times()
        t0 = time.perf_counter()
        r = transfer.run(UploadSpec(str(uuid.uuid4()), path), progress=progress)
        dt = time.perf_counter() - t0
        if r.dedup or r.bytes_sent != r.size:
            raise RuntimeError(
                f"expected a full upload, got dedup={r.dedup} bytes_sent={r.bytes_sent}"
            )
        marks = {k: v - t0 for k, v in phases.items()}
        out = {
            "key": r.key,
            "bytes_sent": r.bytes_sent,
            "parts": r.part_count,
            "hash_s": marks.get("uploading", 0.0) - marks.get("hashing", 0.0)
            if "hashing" in marks
            else 0.0,
            "upload_s": marks.get("completing", dt) - marks.get("uploading", 0.0),
            "finish_s": dt - marks.get("completing", dt),
        }
        transfer.close()
    c1 = os.times()
    # VmHWM, not ru_maxrss: the latter starts at the parent's RSS at fork (see RssWatch)
    out.update(
        dt=dt,
        cpu_s=(c1.user - c0.user) + (c1.system - c0.system),
        rss=peak_rss_of(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return out


def _upload(settings: Settings, mode: str, path: Path, key: str) -> dict[str, Any]:
    env = child_env(settings, BLOBLEDGER_LOG_LEVEL="WARNING")
    out = subprocess.run(
        [sys.executable, "-m", "blobledger.benchmarks.p3_upload", mode, str(path), key],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"P3 {mode} upload failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the real worker process, for its peak RSS ---------------------------------------------
def worker_process_run(settings: Settings, path: Path) -> dict[str, Any]:
    """One ``blobledger worker --max-commands 1`` transferring ``path`` from a real command;
    its peak RSS (VmHWM sampled while it runs) and its own account of the upload (log)."""
    from blobledger.infra.keys import signing_key
    from blobledger.infra.publisher import Publisher
    from blobledger.schemas.events import Envelope, UploadRequested, new_id, now_us, object_id_for

    log_path = Path(settings.data_dir) / "bench-logs" / f"{settings.topic_prefix}-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    upload_id = new_id()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blobledger.infra.cli", "worker", "--max-commands", "1"],
            env=child_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    watch = RssWatch(proc.pid)
    try:
        cmd = UploadRequested(
            Envelope(object_id=object_id_for(settings.tenant, f"p3/{upload_id}"), actor="bench"),
            upload_id=upload_id,
            source="file://" + str(path.resolve()),
            deadline=now_us() + 3600 * 1_000_000,
        )
        publisher = Publisher(settings, signer=signing_key(settings))
        try:
            publisher.publish(settings.commands_topic, cmd)
        finally:
            publisher.close()
        proc.wait(1800)
    finally:
        peak = watch.stop()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"blobledger worker exited with {proc.returncode}; see {log_path}")
    with open(log_path, errors="replace") as f:
        done = completed_uploads(f).get(upload_id)
    if done is None:
        raise RuntimeError(
            f"the worker did not log upload.completed for {upload_id}; see {log_path}"
        )
    return {
        "peak_rss": peak,
        "key": done.get("key") or "",
        "sha256": done["sha256"],
        "duration_ms": done["duration_ms"],
        "bytes_sent": done["bytes_sent"],
        "log": str(log_path),
    }


# --- the benchmark -------------------------------------------------------------------------
def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    mib = args.blob_mib
    rounds = max(1, int(getattr(args, "blob_rounds", None) or DEFAULT_ROUNDS))
    s = ctx.fresh("p3")
    size = mib * MiB
    path = scratch_dir(s) / f"{s.topic_prefix}.bin"
    print(f"bench P3: writing a {mib} MiB file...", file=sys.stderr)
    make_blob_file(path, size)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for i in range(rounds):
            order = MODES[i % 3 :] + MODES[: i % 3]
            for mode in order:
                freshen(path)
                r = _upload(s, mode, path, f"bench/p3/{s.topic_prefix}/{mode}-{i}")
                delete_keys(s, [r["key"]])
                r["mbps"] = mb(size) / r["dt"]
                runs[mode].append(r)
                print(
                    f"bench P3: round {i + 1}/{rounds} {mode:10s} {r['mbps']:7.1f} MB/s "
                    f"rss {r['rss'] / 1e6:5.0f} MB cpu {r['cpu_s']:5.2f} s",
                    file=sys.stderr,
                )
        print("bench P3: one real `blobledger worker` process for its peak RSS...", file=sys.stderr)
        freshen(path)
        w = worker_process_run(s, path)
        delete_keys(s, [w["key"]])
    finally:
        path.unlink(missing_ok=True)

    def med(mode: str, field: str) -> float:
        return median([r[field] for r in runs[mode]])

    base, ours, stream = med("base", "mbps"), med("hash_first", "mbps"), med("stream", "mbps")
    worker_rss = w["peak_rss"]
    ratio = ours / base
    row = result(
        "P3",
        f"upload MB/s of a {mib} MiB local file incl. SHA-256 (worker default "
        f"local-file mode hash_first: hash, then parallel multipart to the content key), "
        f"median of {rounds} interleaved fresh-process runs per side",
        ours,
        base,
        BASELINE_NAME,
        "MB/s",
        ">= 1.0",
        extra={
            "blob_mib": mib,
            "rounds": rounds,
            "ours_mbps_runs": [round(r["mbps"], 1) for r in runs["hash_first"]],
            "baseline_mbps_runs": [round(r["mbps"], 1) for r in runs["base"]],
            "pairwise_ratios": [
                round(o["mbps"] / b["mbps"], 3)
                for o, b in zip(runs["hash_first"], runs["base"], strict=True)
            ],
            "stream_mode_mbps": stream,
            "stream_mode_ratio": stream / base,
            "stream_mode_note": "--local-files stream: hash while uploading to staging + filer "
            "rename (opt-in; sends bytes of already-stored content)",
            "ours_hash_s": med("hash_first", "hash_s"),
            "ours_upload_s": med("hash_first", "upload_s"),
            "ours_finish_s": med("hash_first", "finish_s"),
            "ours_upload_phase_mbps": mb(size) / med("hash_first", "upload_s"),
            "stream_upload_s": med("stream", "upload_s"),
            "stream_finish_s": med("stream", "finish_s"),
            "ours_cpu_s": med("hash_first", "cpu_s"),
            "stream_cpu_s": med("stream", "cpu_s"),
            "baseline_cpu_s": med("base", "cpu_s"),
            "worker_peak_rss_mb": worker_rss / 1e6,
            "rss_target": "< 200 MB",
            "worker_process_mbps": mb(size) / (w["duration_ms"] / 1000.0),
            "transfer_process_peak_rss_mb": max(r["rss"] for r in runs["hash_first"]) / 1e6,
            "stream_process_peak_rss_mb": max(r["rss"] for r in runs["stream"]) / 1e6,
            "baseline_process_peak_rss_mb": max(r["rss"] for r in runs["base"]) / 1e6,
            "met_ratio": ratio >= 1.0,
            "met_rss": worker_rss < RSS_TARGET,
            "stack": ctx.stack,
            "worker_log": w["log"],
        },
    )
    row["met"] = bool(row["met_ratio"] and row["met_rss"])
    return row


if __name__ == "__main__":  # one upload in a fresh process: mode path key -> one JSON line
    print(json.dumps(_child(*sys.argv[1:4])))
