"""A deterministic metadata workload for the projector benchmarks.

A mix like a busy catalogue: ~10% creates, then metadata patches, tag changes, ACL grants
and blob attach/complete/fail, with ~90% of writers passing the right expected version
(the rest conflict). Seeded, so every run folds the same log.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    BlobUploadFailed,
    Envelope,
    Event,
    MetadataUpdated,
    ObjectCreated,
    TagsChanged,
    object_id_for,
)

T0_US = 1_790_000_000_000_000  # a fixed clock: byte-identical logs across runs
ACTORS = ("alice", "bob", "carol")


def events(n: int, *, seed: int = 7, tenant: str = "default") -> Iterator[Event]:
    """``n`` events: creates first for each new object, then a mix of updates."""
    rnd = random.Random(seed)
    uid = lambda: str(uuid.UUID(int=rnd.getrandbits(128), version=4))  # noqa: E731
    n_objects = max(1, n // 10)
    keys: list[str] = []
    versions: dict[str, int] = {}
    pending: dict[str, str] = {}  # key -> upload id awaiting completion
    clock = T0_US
    made = 0
    while made < n:
        clock += rnd.randrange(1, 200)
        if len(keys) < n_objects and (not keys or rnd.random() < 0.12):
            k = f"bench/{len(keys):07d}/{uid()[:8]}.json"
            keys.append(k)
            versions[k] = 1
            meta = {
                "title": f"doc {len(keys)}",
                "size": rnd.randrange(1 << 20),
                "owner": rnd.choice(ACTORS),
                "labels": {"team": f"t{rnd.randrange(20)}"},
            }
            yield ObjectCreated(
                Envelope(
                    object_id=object_id_for(tenant, k),
                    actor="alice",
                    tenant=tenant,
                    event_id=uid(),
                    occurred_at=clock,
                    correlation_id=uid(),
                    expected_version=0,
                ),
                key=k,
                metadata_json=json.dumps(meta),
                tags=["bench", f"g{rnd.randrange(8)}"],
                content_type="application/json",
            )
            made += 1
            continue
        k = rnd.choice(keys)
        oid = object_id_for(tenant, k)
        right = rnd.random() < 0.9
        expected = versions[k] if right else versions[k] + 3

        def env(
            actor: str = "alice", exp: int | None = expected, oid: str = oid, clock: int = clock
        ) -> Envelope:
            return Envelope(
                object_id=oid,
                actor=actor,
                tenant=tenant,
                event_id=uid(),
                occurred_at=clock,
                correlation_id=uid(),
                expected_version=exp,
            )

        roll = rnd.random()
        if k in pending and roll < 0.08:
            up = pending.pop(k)
            if rnd.random() < 0.85:
                sha = f"{rnd.getrandbits(256):064x}"
                yield BlobStored(
                    env("system:blob-worker", None),
                    upload_id=up,
                    sha256=sha,
                    size=rnd.randrange(1, 1 << 30),
                    key=f"blobs/sha256/{sha[:2]}/{sha}",
                )
            else:
                yield BlobUploadFailed(
                    env("system:blob-worker", None),
                    upload_id=up,
                    reason="timeout",
                    detail="deadline passed",
                )
            made += 1
            continue
        if roll < 0.6:
            patch: dict[str, object] = {
                "n": made,
                "status": rnd.choice(("draft", "review", "final")),
            }
            if rnd.random() < 0.2:
                patch["labels"] = {"team": None, "area": f"a{rnd.randrange(9)}"}
            yield MetadataUpdated(env(), patch_json=json.dumps(patch))
        elif roll < 0.85:
            yield TagsChanged(
                env(),
                added=[f"t{rnd.randrange(12)}"],
                removed=[f"t{rnd.randrange(12)}"] if rnd.random() < 0.3 else [],
            )
        elif roll < 0.9:
            yield AclChanged(
                env(),
                principal=rnd.choice(("bob", "carol", "*")),
                permissions=rnd.choice((["read"], ["write"], ["read", "write"])),
            )
        else:
            up = uid()
            yield BlobAttached(
                env(), upload_id=up, source=f"file:///data/{up}.bin", deadline=clock + 3_600_000_000
            )
            if right:
                pending[k] = up
        if right:
            versions[k] += 1
        made += 1
