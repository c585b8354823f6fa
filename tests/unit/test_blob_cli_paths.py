"""``blobledger get -o`` and ``put``'s local source: what cannot work is refused up front,
and a write that fails midway says which file and leaves it as it was."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from blobledger.producers.blob_cli import _copy, check_output_path, check_source_file
from blobledger.schemas.errors import PermanentError, ValidationError


def test_output_paths_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    check_output_path(str(tmp_path / "new.bin"))  # fine: a new file in a directory
    check_output_path(str(a_file))  # fine: replaced at the end
    cases = {
        str(tmp_path / "missing_dir" / "f"): "directory '{}' does not exist; create it first",
        str(tmp_path): "is a directory; name a file in it, e.g. {}",
        str(a_file / "f"): "'{}' is not a directory",
    }
    expected_names = [str(tmp_path / "missing_dir"), str(tmp_path / "docs.txt"), str(a_file)]
    for (path, says), name in zip(cases.items(), expected_names, strict=True):
        with pytest.raises(ValidationError) as caught:
            check_output_path(path, "docs.txt")
        assert says.format(name) in str(caught.value)


def test_put_sources_that_cannot_be_read_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x")
    check_source_file(str(source))
    for path, says in (
        (tmp_path / "nope.bin", "does not exist"),
        (tmp_path, "is a directory"),
        (Path("/dev/null"), "is not a regular file"),
    ):
        with pytest.raises(ValidationError, match=says):
            check_source_file(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_source_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "secret.bin"
    source.write_bytes(b"x")
    source.chmod(0)
    with pytest.raises(ValidationError, match="permission denied"):
        check_source_file(str(source))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_clear_error() -> None:
    with pytest.raises(PermanentError) as caught:
        _copy(io.BytesIO(b"x" * 10), "/dev/full")
    assert str(caught.value).startswith("cannot write '/dev/full': No space left on device")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # not replaced


def test_a_failed_copy_leaves_the_target_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    class Broken(io.BytesIO):
        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            raise PermanentError("checksum mismatch")

    with pytest.raises(PermanentError, match="checksum"):
        _copy(Broken(), str(target))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    assert _copy(io.BytesIO(b"new bytes"), str(target)) == 9
    assert target.read_bytes() == b"new bytes" and os.listdir(tmp_path) == ["out.bin"]
    assert _copy(io.BytesIO(b"discarded"), os.devnull) == 9  # written to, not replaced
