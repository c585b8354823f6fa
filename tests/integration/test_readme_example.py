"""The README's example of using the fixtures from a user's project, kept working."""

import pytest

from blobledger import connect
from blobledger.infra.testing.services import ThreadedProjector, ThreadedWorker

pytestmark = pytest.mark.integration


@pytest.mark.container  # on a Docker-API engine when one answers
def test_attach_is_committed(settings, tmp_path):
    blob = tmp_path / "b.bin"
    blob.write_bytes(b"hello")
    with ThreadedProjector(settings), ThreadedWorker(settings), connect(settings, actor="me") as c:
        created = c.create("docs/hello.txt", {"lang": "en"})
        up = c.attach_blob("docs/hello.txt", str(blob), expected_version=created.version)
        assert c.wait_upload(up.upload_id, timeout=60).state == "stored"
        with c.open_blob("docs/hello.txt").reader as reader:
            assert reader.read() == b"hello"  # a full read verifies the SHA-256
