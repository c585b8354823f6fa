"""How a client hands a source to the worker (producers/client.py): URLs with credentials
refused, files under a source root sent as they are, other files spooled into the
upload's own spool entry (hard link, copy across filesystems); and the worker-side spool
cleanup (blob_worker/spool.py)."""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import pytest

from blobledger.blob_worker import spool
from blobledger.blob_worker.sourcepolicy import SourcePolicy
from blobledger.infra.settings import Settings
from blobledger.producers import client as client_mod
from blobledger.producers.client import _normalize_source, _place_for_worker
from blobledger.schemas.errors import ConfigurationError, ValidationError


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "BLOBLEDGER_DATA_DIR": str(tmp_path / "data"),
            **{f"BLOBLEDGER_{k.upper()}": v for k, v in env.items()},
        }
    )


def test_source_settings_from_the_environment(tmp_path: Path) -> None:
    s = _settings(
        tmp_path,
        source_roots=f"{tmp_path}/a{os.pathsep}{tmp_path}/b",
        source_allow_networks="10.0.0.0/8, 127.0.0.1",
        source_headers='{"Files.Example": "Authorization: Bearer t0k3n"}',
    )
    assert s.source_root_dirs == (tmp_path / "a", tmp_path / "b")
    assert s.spool_dir == (tmp_path / "data" / "spool").absolute()
    policy = SourcePolicy.from_settings(s)
    assert [str(n) for n in policy.allow_networks] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert policy.headers_for("files.example", 443) == {"Authorization": "Bearer t0k3n"}
    assert policy.headers_for("other.example", 443) == {}
    assert "t0k3n" not in repr(s.describe())  # a source credential is a secret
    assert Settings.from_env(s.to_env()) == s
    assert _settings(tmp_path, source_spool="false").spool_dir is None
    with pytest.raises(ConfigurationError, match="ALLOW_NETWORKS"):
        SourcePolicy.from_settings(_settings(tmp_path, source_allow_networks="nope"))
    with pytest.raises(ConfigurationError, match="one header line"):
        SourcePolicy.from_settings(_settings(tmp_path, source_headers='{"h": "no colon"}'))


def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with pytest.raises(ValidationError) as e:
        _normalize_source("https://alice:t0k3n@files.example/x.bin", s)
    assert "t0k3n" not in str(e.value) and "BLOBLEDGER_SOURCE_HEADERS" in str(e.value)
    assert _normalize_source("https://files.example/x.bin", s) == "https://files.example/x.bin"
    # a file:// URI names a file on the worker's side: the worker judges it
    assert _normalize_source("file:///etc/shadow", s) == "file:///etc/shadow"
    with pytest.raises(ValidationError):
        _normalize_source("ftp://files.example/x", s)


def test_a_file_under_a_root_is_sent_as_its_real_path(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "v2.bin").write_bytes(b"x")
    (root / "current").symlink_to(root / "v2.bin")
    s = _settings(tmp_path, source_roots=str(root))
    local = _normalize_source(str(root / "current"), s)
    assert isinstance(local, Path)
    uri, entry = _place_for_worker(local, s, str(uuid.uuid4()))
    assert uri == (root / "v2.bin").as_uri() and entry is None
    assert not (tmp_path / "data" / "spool").exists()


def test_a_file_elsewhere_is_hard_linked_into_its_uploads_spool_entry(tmp_path: Path) -> None:
    src = tmp_path / "my report.pdf"
    src.write_bytes(b"report")
    s = _settings(tmp_path)
    upload_id = str(uuid.uuid4())
    local = _normalize_source(str(src), s)
    assert isinstance(local, Path)
    uri, entry = _place_for_worker(local, s, upload_id)
    assert s.spool_dir is not None and entry == s.spool_dir / upload_id
    target = entry / "my report.pdf"
    assert uri == target.as_uri() and "%20" in uri
    assert target.stat().st_ino == src.stat().st_ino  # a link: instant, no copy
    assert (entry.stat().st_mode & 0o777) == 0o700
    assert (s.spool_dir.stat().st_mode & 0o777) == 0o700


def test_the_spool_copies_where_a_link_is_impossible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"copied")

    def cross_device(*args: object, **kw: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(client_mod.os, "link", cross_device)
    s = _settings(tmp_path)
    _, entry = _place_for_worker(src, s, str(uuid.uuid4()))
    assert entry is not None
    copy = entry / "f.bin"
    assert copy.read_bytes() == b"copied" and copy.stat().st_ino != src.stat().st_ino


def test_what_cannot_be_spooled(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with pytest.raises(ValidationError, match="not a regular file"):
        _place_for_worker(tmp_path, s, str(uuid.uuid4()))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValidationError, match="not a regular file"):
        _place_for_worker(fifo, s, str(uuid.uuid4()))
    # a missing file is left to the worker (source_not_found), nothing is created
    upload_id = str(uuid.uuid4())
    uri, entry = _place_for_worker(tmp_path / "gone.bin", s, upload_id)
    assert entry is None and uri.endswith(f"/spool/{upload_id}/gone.bin")
    assert s.spool_dir is not None and not (s.spool_dir / upload_id).exists()
    # no spool and no root: the caller is told what to configure
    off = _settings(tmp_path, source_spool="false")
    with pytest.raises(ValidationError, match="BLOBLEDGER_SOURCE_ROOTS"):
        _normalize_source(str(tmp_path / "f.bin"), off)


def test_the_worker_removes_entries_by_upload_id_only(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    keep, old = str(uuid.uuid4()), str(uuid.uuid4())
    for uid in (keep, old):
        (root / uid).mkdir(parents=True)
        (root / uid / "f").write_bytes(b"x")
    outside = tmp_path / "precious"
    outside.mkdir()
    assert not spool.remove(root, "../precious") and outside.exists()
    assert spool.remove(root, old) and not (root / old).exists()
    assert not spool.remove(root, old)  # already gone
    (root / old).mkdir()
    past = time.time() - 3600
    os.utime(root / old, (past, past))
    (root / "not-an-upload").mkdir()
    os.utime(root / "not-an-upload", (past, past))
    assert spool.sweep(root, older_than=600) == 1
    assert (root / keep).exists() and not (root / old).exists()
    assert (root / "not-an-upload").exists()
    assert spool.sweep(tmp_path / "no-spool-yet", older_than=0) == 0
