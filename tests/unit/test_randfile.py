from __future__ import annotations

import hashlib
from pathlib import Path

from blobledger.infra.randfile import MiB, write_random_file


def test_random_files_hash_right_vary_per_mib_and_never_repeat(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    sha_a = write_random_file(a, 2 * MiB + 3)
    sha_b = write_random_file(b, 2 * MiB + 3)
    data = a.read_bytes()
    assert len(data) == 2 * MiB + 3 and hashlib.sha256(data).hexdigest() == sha_a
    assert data[:MiB] != data[MiB : 2 * MiB]  # no two MiBs alike: nothing dedups by chunk
    assert sha_a != sha_b  # no two files alike
    assert write_random_file(tmp_path / "empty", 0) == hashlib.sha256(b"").hexdigest()
