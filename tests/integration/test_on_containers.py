"""The container set: key flows re-run on a Docker-API engine (testcontainers).

Under ``BLOBLEDGER_TEST_STACK=auto`` every test here gets the docker stack (tests marked
``container``); their originals run on the embedded stack in their own modules. Without an
engine they are skipped with the reason. Importing a test function collects it here too,
under this module's marks.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_demo import check, run_demo
from tests.integration import test_blob_path as _blob_path
from tests.integration import test_metadata_path as _metadata_path
from tests.integration.test_blob_path import (  # noqa: F401 - fixtures the imported test uses
    origin,
    web,
    worker,
)

pytestmark = [pytest.mark.container, pytest.mark.integration]

# collected here, on containers
test_blob_bad_inputs_compensated_on_containers = (
    _blob_path.test_every_bad_input_is_compensated_with_its_reason
)
test_projector_crash_safety_on_containers = (
    _metadata_path.test_projector_killed_mid_batch_equals_fresh_replay
)


def test_demo_flow_on_containers(settings):
    check(run_demo(settings), 16)
