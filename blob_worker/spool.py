"""The spool, from the worker's side: removing entries once their upload is over.

A client that attaches a local file outside every source root links (or copies) it to
``<spool>/<upload id>/<name>`` (``producers.client``); that directory is a source root of
that one upload (:meth:`SourcePolicy.roots_for`). Once the upload is terminal nothing
needs it: the worker removes it after committing the outcome, and the reaper removes
whatever is older than the upload deadline plus a grace period (a client or worker that
died in between), so the spool does not grow with every upload.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import structlog

from blobledger.blob_worker.sourcepolicy import is_upload_id

log = structlog.get_logger(__name__)


def entry_dir(spool: Path | str, upload_id: str) -> Path | None:
    """``<spool>/<upload id>``, or None when ``upload_id`` is no canonical UUID (a command
    naming ``../..`` must not make the worker delete anything else)."""
    return Path(spool) / upload_id if is_upload_id(upload_id) else None


def remove(spool: Path | str, upload_id: str) -> bool:
    """Delete the upload's spool entry; True if there was one. Never raises: a leftover is
    the reaper's to remove."""
    entry = entry_dir(spool, upload_id)
    if entry is None:
        return False
    try:
        shutil.rmtree(entry)  # does not follow symlinks inside
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("spool.remove_failed", entry=str(entry), error=str(e))
        return False
    return True


def sweep(spool: Path | str, *, older_than: float, now: float | None = None) -> int:
    """Delete spool entries last changed more than ``older_than`` seconds ago; how many."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = 0
    try:
        entries = list(os.scandir(spool))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not is_upload_id(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        if remove(spool, entry.name):
            log.info("spool.swept", upload_id=entry.name)
            removed += 1
    return removed
