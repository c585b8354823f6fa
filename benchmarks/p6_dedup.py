"""P6: re-upload of an already stored ``--blob-mib`` (default 1 GiB) blob vs its first
upload, through the real path, measured side by side in one run.

A projector and a blob worker (its default local-file mode, hash_first, with its on-disk
stat cache) run as their own processes. Each of ``ROUNDS`` rounds gives the file new
content, then:

- first upload: ``Client.attach_blob(object, file)``; the clock runs from the attach call
  until the upload is terminal (``stored``) in the read model, i.e. attach event and
  command published, command consumed, file hashed and uploaded, ``BlobStored``
  published and folded;
- re-upload: the same file attached to the same object again, same clock. The worker
  finds the file's hash in its stat cache, HEADs the content key, and completes with a
  dedup ``BlobStored``.

Bytes sent come from the worker's own account (its ``upload.completed`` log record:
``TransferResult.bytes_sent``), cross-checked with the ``dedup`` flag the read model
got from ``BlobStored``. ratio = median re-upload time / median first-upload time.
Extra fields split each time into the worker's transfer (``duration_ms``) and the rest
of the path (Kafka hops + fold + read-model poll), which does not depend on the size.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from blobledger.benchmarks.blobs import (
    MiB,
    Services,
    delete_keys,
    freshen,
    make_blob_file,
    median,
    scratch_dir,
    wait_terminal,
    warm_up,
)
from blobledger.benchmarks.common import BenchContext, result

DEFAULT_ROUNDS = 3


def run(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    from blobledger import connect

    mib = args.blob_mib
    rounds = max(1, int(getattr(args, "blob_rounds", None) or DEFAULT_ROUNDS))
    s = ctx.fresh("p6")
    tag = uuid.uuid4().hex[:6]
    scratch = scratch_dir(s)
    path = scratch / f"{s.topic_prefix}.bin"
    print(
        f"bench P6: writing a {mib} MiB file, starting a projector and a worker...", file=sys.stderr
    )
    make_blob_file(path, mib * MiB)
    runs: list[dict[str, Any]] = []
    stored_keys: list[str] = []
    services = Services(s, s.topic_prefix)
    try:
        with connect(s, actor="bench") as client:
            warm_up(client, services, scratch, f"p6/{tag}/warm")

            def upload(key: str) -> dict[str, Any]:
                t0 = time.perf_counter()
                r = client.attach_blob(key, str(path), wait=False)
                assert r.upload_id is not None
                view, t1 = wait_terminal(client, r.upload_id, timeout=1800, services=services)
                if view.state != "stored":
                    raise RuntimeError(f"upload {r.upload_id} ended {view.state}: {view.reason}")
                stored_keys.append(view.key)
                return {
                    "upload_id": r.upload_id,
                    "s": t1 - t0,
                    "dedup": view.dedup,
                    "sha256": view.sha256,
                }

            for i in range(rounds):
                key = f"p6/{tag}/{i}"
                client.create(key, wait=True)
                freshen(path)
                first = upload(key)
                again = upload(key)
                if again["sha256"] != first["sha256"]:
                    raise RuntimeError("the re-upload stored a different hash")
                runs.append({"first": first, "again": again})
                print(
                    f"bench P6: round {i + 1}/{rounds} first {first['s']:.2f} s, re-upload "
                    f"{again['s'] * 1000:.0f} ms (dedup={again['dedup']})",
                    file=sys.stderr,
                )
            time.sleep(0.5)  # the worker's last log lines
            done = services.completed()
    finally:
        worker_rss = services.stop()
        path.unlink(missing_ok=True)
        delete_keys(s, stored_keys)

    def worker(kind: str, field: str) -> list[Any]:
        return [done.get(r[kind]["upload_id"], {}).get(field) for r in runs]

    first_s = [r["first"]["s"] for r in runs]
    again_s = [r["again"]["s"] for r in runs]
    sent_again = worker("again", "bytes_sent")
    sent_first = worker("first", "bytes_sent")
    dedup_again = [r["again"]["dedup"] for r in runs]
    known = all(x is not None for x in sent_again)
    zero_bytes = known and all(x == 0 for x in sent_again) and all(dedup_again)
    first_med, again_med = median(first_s), median(again_s)
    ratio = again_med / first_med
    w_first = [x / 1000.0 for x in worker("first", "duration_ms") if x is not None]
    w_again = [x / 1000.0 for x in worker("again", "duration_ms") if x is not None]
    row = result(
        "P6",
        f"re-upload of a stored {mib} MiB blob vs its first upload, attach -> stored "
        f"visible in the read model through projector + worker processes, median of {rounds}",
        again_med,
        first_med,
        "first upload of the same blob",
        "s",
        "< 0.02",
        ratio=ratio,
        extra={
            "first_s_runs": [round(x, 2) for x in first_s],
            "reupload_ms_runs": [round(x * 1000, 1) for x in again_s],
            "reupload_ms": again_med * 1000,
            "bytes_sent_reupload": sent_again,
            "bytes_sent_first": sent_first,
            "dedup_reupload": dedup_again,
            "met_ratio": ratio < 0.02,
            "met_bytes": zero_bytes,
            "worker_first_s": median(w_first),
            "worker_reupload_ms": median(w_again) * 1000,
            "worker_ratio": median(w_again) / median(w_first) if w_first and w_again else None,
            "path_overhead_reupload_ms": (again_med - median(w_again)) * 1000 if w_again else None,
            "blob_mib": mib,
            "rounds": rounds,
            "worker_peak_rss_mb": worker_rss / 1e6,
            "broker_storage": ctx.broker_storage,
            "stack": ctx.stack,
            "worker_log": str(services.worker_log),
        },
    )
    row["met"] = bool(row["met_ratio"] and zero_bytes)
    ctx.drop(s)
    return row
