"""Part planning: S3's limits hold for every size, and plans are deterministic."""

from __future__ import annotations

from itertools import pairwise

import pytest

from blobledger.blob_worker.failures import UploadFailure
from blobledger.blob_worker.planning import (
    S3_MAX_PART_SIZE,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE,
    MiB,
    Part,
    iter_parts,
    plan_parts,
)
from blobledger.schemas.errors import ConfigurationError

TiB = 1024**4
LIMIT = 5 * TiB


def _check_tiles(size: int, min_part: int = 16 * MiB, limit: int = LIMIT) -> list[Part]:
    parts = list(iter_parts(size, min_part_size=min_part, max_blob_size=limit))
    assert [n for n, _, _ in parts] == list(range(1, len(parts) + 1))
    assert len(parts) <= S3_MAX_PARTS
    offset = 0
    for n, off, length in parts:
        assert off == offset
        if n < len(parts):  # every part but the last respects S3's minimum
            assert S3_MIN_PART_SIZE <= length <= S3_MAX_PART_SIZE
        offset += length
    assert offset == size
    return parts


@pytest.mark.parametrize(
    "size", [0, 1, 16 * MiB - 1, 16 * MiB, 16 * MiB + 1, 1024**3, 200 * MiB + 7]
)
def test_small_and_medium_sizes_use_min_part_size(size: int) -> None:
    parts = _check_tiles(size)
    assert all(length == 16 * MiB for _, _, length in parts[:-1])
    assert len(parts) == max(1, -(-size // (16 * MiB)))


@pytest.mark.parametrize("size", [157 * 1024**3, TiB, LIMIT - 1, LIMIT])
def test_large_sizes_grow_the_part_to_fit_10000(size: int) -> None:
    parts = _check_tiles(size)
    assert parts[0][2] > 16 * MiB and parts[0][2] % MiB == 0


def test_empty_blob_is_one_empty_part() -> None:
    assert list(iter_parts(0, min_part_size=16 * MiB, max_blob_size=LIMIT)) == [(1, 0, 0)]


def test_min_part_size_is_never_below_s3_minimum() -> None:
    plan = plan_parts(100 * MiB, min_part_size=1024, max_blob_size=LIMIT)
    assert plan.base_part_size == S3_MIN_PART_SIZE


def test_single_part_flag() -> None:
    assert plan_parts(16 * MiB, min_part_size=16 * MiB, max_blob_size=LIMIT).single_part
    assert not plan_parts(16 * MiB + 1, min_part_size=16 * MiB, max_blob_size=LIMIT).single_part
    assert not plan_parts(None, min_part_size=16 * MiB, max_blob_size=LIMIT).single_part


def test_over_limit_is_a_size_limit_failure() -> None:
    with pytest.raises(UploadFailure) as e:
        plan_parts(LIMIT + 1, min_part_size=16 * MiB, max_blob_size=LIMIT)
    assert e.value.reason == "size_limit"


def test_unknown_size_starts_small_and_still_fits_the_limit() -> None:
    plan = plan_parts(None, min_part_size=16 * MiB, max_blob_size=LIMIT)
    assert plan.growth_every > 0
    assert plan.capacity() >= LIMIT
    parts = list(plan.parts())
    assert len(parts) == S3_MAX_PARTS
    assert parts[0].length == 16 * MiB
    assert all(a.offset + a.length == b.offset for a, b in pairwise(parts))
    assert all(a.length <= b.length <= S3_MAX_PART_SIZE for a, b in pairwise(parts))
    assert sum(p.length for p in parts) >= LIMIT
    # the largest period that fits: one part fewer per doubling would not
    assert (
        plan_parts(None, min_part_size=16 * MiB, max_blob_size=LIMIT).growth_every
        == plan.growth_every
    )


def test_unknown_size_under_uniform_capacity_is_uniform() -> None:
    plan = plan_parts(None, min_part_size=16 * MiB, max_blob_size=100 * 1024**3)
    assert plan.growth_every == 0 and plan.capacity() >= 100 * 1024**3


def test_impossible_limits_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        plan_parts(1, min_part_size=6 * 1024**3, max_blob_size=LIMIT)
    with pytest.raises(ConfigurationError):
        plan_parts(1, min_part_size=16 * MiB, max_blob_size=S3_MAX_PARTS * S3_MAX_PART_SIZE + 1)


def test_plans_are_deterministic_for_resume() -> None:
    a = list(iter_parts(3 * 1024**3 + 5, min_part_size=16 * MiB, max_blob_size=LIMIT))
    b = list(iter_parts(3 * 1024**3 + 5, min_part_size=16 * MiB, max_blob_size=LIMIT))
    assert a == b
