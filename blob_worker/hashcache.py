"""A stat cache: file identity -> SHA-256, so re-uploading an unchanged file costs a stat
and a HEAD instead of a hash pass (P6: a re-upload sends 0 bytes in a fraction of the
first upload's time).

Kept in SQLite under ``settings.data_dir`` so a restarted worker keeps it, and shared
safely by the worker processes of one host (WAL, short transactions). The cache only
short-cuts dedup: a hit is trusted only when S3 already holds that hash with that size.

A hit is also the worker's proof that the requester possesses the content (a hash alone
is not): only workers write it, after hashing a file they opened for a command within
the source policy, keyed by that file's real path and identity. Spool entries are not
written (a path used once; the hard link that made it changed the inode's ctime anyway),
so the shortcut is for files under configured source roots.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from blobledger.blob_worker.sources import FileIdentity


class HashCache:
    def __init__(self, path: Path | str | None = None) -> None:
        """``path`` None keeps the cache in memory (tests, one-shot CLIs)."""
        target = ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(target, check_same_thread=False, timeout=5.0)
        with self._lock, self._db:
            if target != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT, device INTEGER, inode INTEGER,"
                " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT NOT NULL,"
                " PRIMARY KEY (path, device, inode, size, mtime_ns, ctime_ns))"
            )

    def get(self, ident: FileIdentity) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE path=? AND device=? AND inode=? AND size=?"
                " AND mtime_ns=? AND ctime_ns=?",
                (ident.path, ident.device, ident.inode, ident.size, ident.mtime_ns, ident.ctime_ns),
            ).fetchone()
        return row[0] if row else None

    def put(self, ident: FileIdentity, sha256: str) -> None:
        with self._lock, self._db:
            # one row per path: an older identity of the same path is stale by definition
            self._db.execute("DELETE FROM file_hashes WHERE path=?", (ident.path,))
            self._db.execute(
                "INSERT INTO file_hashes VALUES (?,?,?,?,?,?,?)",
                (
                    ident.path,
                    ident.device,
                    ident.inode,
                    ident.size,
                    ident.mtime_ns,
                    ident.ctime_ns,
                    sha256,
                ),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
