"""The data dir belongs to the user who runs the stack: owner-only modes, secrets in 0600 files.

Every service listens on 127.0.0.1, which every local user can reach, so the stack's
secrets (the Postgres password, SeaweedFS's JWT keys and gRPC certificate) are what keeps
other users out, and those live in the data dir. Hence: the data dir and everything in it
are 0700/0600, children run with umask 077, and files we write ourselves are created
0600 from the start (never written first and chmodded after).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: the umask the stack's child processes run with: what they create is owner-only
CHILD_UMASK = 0o077
_GROUP_OTHER = 0o077


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` whose last component is created 0700 (parents as usual: they are
    outside the data dir)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_private(path: Path, text: str, *, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``text``, readable by its owner only at every moment (a temp
    file created 0600, then renamed over: a reader never sees half a file). ``owner``
    (uid, gid) hands the file to the user of the process that reads it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def open_private_append(path: Path) -> int:
    """An ``O_APPEND`` descriptor on ``path``, created 0600 if missing (service logs)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def new_secret() -> str:
    """A random 256-bit secret, URL- and TOML-safe (passwords, JWT keys)."""
    return secrets.token_urlsafe(32)


def lock_down(root: Path, *, dir_modes: Mapping[Path, int] | None = None) -> None:
    """Remove every group and other permission bit under ``root`` (``root`` included), so
    a data dir from an older version, or files a tool created with a loose umask, are
    owner-only again. ``dir_modes`` gives the few directories that need another mode
    (as root, the Postgres user traverses the data dir: see ``EmbeddedPostgres``).
    Symlinks and hard-linked files are left alone (their targets, or their other names,
    may be outside the data dir)."""
    special = {Path(p).absolute(): m for p, m in (dir_modes or {}).items()}
    root = root.absolute()
    _restrict(root, special)
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in (*dirnames, *filenames):
            _restrict(base / name, special)


def _restrict(path: Path, special: Mapping[Path, int]) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:  # a service removed it meanwhile
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        # a hard link (the spool links clients' files in): its mode is also the mode of
        # a name outside the data dir, which is not ours to change
        return
    mode = stat.S_IMODE(st.st_mode)
    wanted = special.get(path, mode & ~_GROUP_OTHER)
    if wanted == mode:
        return
    try:
        path.chmod(wanted)
    except FileNotFoundError:
        return
    except PermissionError as e:
        # someone else's file in our data dir: the data dir's own 0700 still keeps other
        # users out, so say so and go on rather than refuse to start
        log.warning("data_dir.chmod_refused", path=str(path), error=str(e))
