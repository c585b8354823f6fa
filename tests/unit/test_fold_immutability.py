"""The fold treats states and events as immutable values (they are not ``frozen=True``
dataclasses, for speed: see schemas/events.py), so it must never assign to its inputs."""

from __future__ import annotations

import copy

from blobledger.benchmarks.workload import events
from blobledger.projectors.fold import ObjectState, Upload, apply


def test_apply_never_mutates_its_inputs() -> None:
    objects: dict[str, ObjectState] = {}
    uploads: dict[str, Upload] = {}
    changed = 0
    for event in events(1500, seed=11):
        state = objects.get(event.object_id)
        before = copy.deepcopy((state, event, uploads))
        result = apply(state, event, uploads)
        assert (state, event, uploads) == before, type(event).__name__
        if result.state is not None and result.state is not state:
            assert result.state != before[0] or result.state is None
            objects[event.object_id] = result.state
            changed += 1
        if result.upload is not None:
            uploads[result.upload.upload_id] = result.upload
    assert changed > 500  # the workload really exercised the handlers
