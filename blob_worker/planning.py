"""Multipart part planning (pure): which byte ranges become which S3 parts.

S3 caps a multipart upload at 10,000 parts of 5 MiB..5 GiB (the last part may be
smaller). A known size gets uniform parts: ``min_part_size`` unless the blob needs bigger
ones to fit 10,000. An unknown size (an HTTP body without Content-Length) cannot pick one
size up front, so parts start at ``min_part_size`` and double every ``growth_every``
parts, with ``growth_every`` chosen so ``max_blob_size`` still fits: small streams keep
small parts (and small buffers), huge ones still fit. The plan depends only on its
inputs, so a resumed upload recomputes the same boundaries and can verify earlier parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from blobledger.blob_worker.failures import UploadFailure
from blobledger.schemas.errors import ConfigurationError

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000


class Part(NamedTuple):
    """A NamedTuple, so it also reads as s3transfer's ``(number, offset, length)``."""

    number: int  # 1-based, as S3 numbers parts
    offset: int
    length: int  # exact for a known size; the most to read for an unknown one


@dataclass(frozen=True, slots=True)
class PartPlan:
    size: int | None
    base_part_size: int
    #: parts per doubling of the part size; 0 = uniform parts
    growth_every: int = 0

    def part_size(self, number: int) -> int:
        if not self.growth_every:
            return self.base_part_size
        doublings = min((number - 1) // self.growth_every, 32)  # 16 MiB << 9 already hits 5 GiB
        return min(self.base_part_size << doublings, S3_MAX_PART_SIZE)

    @property
    def part_count(self) -> int | None:
        """How many parts a known size takes (None for an unknown size)."""
        if self.size is None:
            return None
        return max(1, -(-self.size // self.base_part_size))

    @property
    def single_part(self) -> bool:
        """A known size that fits one part: a plain PUT beats a multipart round trip."""
        return self.size is not None and self.size <= self.base_part_size

    def parts(self) -> Iterator[Part]:
        """``Part`` after ``Part`` in order. For a known size the ranges tile it exactly
        (one empty part for an empty blob); for an unknown size the generator yields up
        to 10,000 ranges and the reader stops at end of stream."""
        offset = 0
        for number in range(1, S3_MAX_PARTS + 1):
            length = self.part_size(number)
            if self.size is not None:
                length = min(length, self.size - offset)
                if length <= 0 and number > 1:
                    return
            yield Part(number, offset, length)
            offset += length
            if self.size is not None and offset >= self.size:
                return

    def capacity(self) -> int:
        """Bytes that 10,000 parts of this plan can hold."""
        return _capacity(self.base_part_size, self.growth_every)


def plan_parts(size: int | None, *, min_part_size: int, max_blob_size: int) -> PartPlan:
    """The plan for a blob of ``size`` bytes (None = unknown until the stream ends).

    Raises :class:`UploadFailure` ``size_limit`` for a known size over ``max_blob_size``,
    and :class:`ConfigurationError` when the limits themselves cannot be met by S3."""
    base = _round_up(max(min_part_size, S3_MIN_PART_SIZE), MiB)
    if base > S3_MAX_PART_SIZE:
        raise ConfigurationError(f"min_part_size {min_part_size} exceeds S3's 5 GiB part limit")
    if max_blob_size > _capacity(base, 1):
        raise ConfigurationError(
            f"max_blob_size {max_blob_size} cannot fit in {S3_MAX_PARTS} parts of at most 5 GiB"
        )
    if size is not None:
        if size < 0:
            raise UploadFailure("invalid_command", f"negative size {size}")
        if size > max_blob_size:
            raise UploadFailure("size_limit", f"{size} bytes exceeds the limit of {max_blob_size}")
        part = max(base, _round_up(-(-size // S3_MAX_PARTS), MiB))
        return PartPlan(size, part)
    if base * S3_MAX_PARTS >= max_blob_size:
        return PartPlan(None, base)
    # the largest doubling period whose 10,000 parts still hold max_blob_size
    lo, hi = 1, S3_MAX_PARTS
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _capacity(base, mid) >= max_blob_size:
            lo = mid
        else:
            hi = mid - 1
    return PartPlan(None, base, lo)


def iter_parts(size: int | None, *, min_part_size: int, max_blob_size: int) -> Iterator[Part]:
    """The parts of the plan for ``size``: the s3transfer-style generator form."""
    yield from plan_parts(size, min_part_size=min_part_size, max_blob_size=max_blob_size).parts()


def _capacity(base: int, growth_every: int) -> int:
    if not growth_every:
        return base * S3_MAX_PARTS
    total, number, size = 0, 0, base
    while number < S3_MAX_PARTS:
        count = min(growth_every, S3_MAX_PARTS - number)
        total += count * min(size, S3_MAX_PART_SIZE)
        number += count
        size = min(size << 1, S3_MAX_PART_SIZE)
    return total


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit
