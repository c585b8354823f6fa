"""What the transfer's unit tests share: small options and retries that do not wait."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest

from blobledger.blob_worker import s3calls
from blobledger.blob_worker.sourcepolicy import SourcePolicy
from blobledger.blob_worker.transfer import TransferOptions

MiB = 1024 * 1024
OPTS = TransferOptions(
    "bucket",
    min_part_size=5 * MiB,
    max_blob_size=64 * MiB,
    max_in_flight=3,
    retry_attempts=3,
    sources=SourcePolicy(roots=(tempfile.gettempdir(),)),  # where tmp_path lives
)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """S3 retries back off for milliseconds, not seconds (same attempts, same order)."""
    real = s3calls.retrying
    monkeypatch.setattr(
        s3calls,
        "retrying",
        lambda attempts, **kw: real(attempts, initial=0.001, max_wait=0.01, **kw),
    )
    yield
