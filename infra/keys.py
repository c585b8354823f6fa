"""Key files: the keyring the projector and workers verify with, and the keys that sign.

Layout of ``Settings.keys_path`` (0700; every file 0600):

- ``keyring.json``: every key ever issued (``{"keys": [...]}``), secrets included (HMAC:
  see schemas/auth.py). Keys are added and retired, never changed or removed, so a replay
  verifies an old log exactly as it was verified live.
- ``<name>.json``: one key, for the process or person that signs with it
  (``operator.json``: the local operator's service key, acting for any user;
  ``blob-worker.json`` and ``reaper.json``: the system keys).

:func:`ensure_local_keys` generates the first set (``stack up``, and any process that
starts on a data directory without keys). Concurrent starts are serialized by a lock file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from blobledger.infra.settings import Settings
from blobledger.schemas.auth import ANY_USER, KEY_KINDS, Key, Keyring, KeyKind
from blobledger.schemas.errors import ConfigurationError, ValidationError
from blobledger.schemas.events import now_us
from blobledger.schemas.permissions import SYSTEM_PREFIX

#: the system principals and the file each one's key is written to
SYSTEM_ROLES = {"blob-worker": "system:blob-worker", "reaper": "system:reaper"}
OPERATOR = "operator"
_ID_PREFIX: dict[KeyKind, str] = {"user": "usr", "service": "svc", "system": "sys"}


def key_to_json(key: Key) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "principal": key.principal,
        "kind": key.kind,
        "secret": base64.b64encode(key.secret).decode(),
        "acts_for": sorted(key.acts_for),
        "retired_at": key.retired_at,
    }


def key_from_json(d: dict[str, Any], where: Path) -> Key:
    try:
        kind = d["kind"]
        if kind not in KEY_KINDS:
            raise ValueError(f"kind {kind!r}")
        return Key(
            key_id=str(d["key_id"]),
            principal=str(d["principal"]),
            kind=kind,
            secret=base64.b64decode(d["secret"], validate=True),
            acts_for=frozenset(str(a) for a in d.get("acts_for") or ()),
            retired_at=int(d["retired_at"]) if d.get("retired_at") is not None else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigurationError(f"{where}: not a blobledger key ({e})") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigurationError(
            f"{path} does not exist: run `blobledger stack up` (embedded stack) or "
            "`blobledger key create` to issue keys, or set BLOBLEDGER_KEYS_DIR / "
            "BLOBLEDGER_KEY_FILE"
        ) from e
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot read {path}: {e}") from e


def _write_private(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, mode 0600, atomically (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(keys_dir: Path) -> Iterator[None]:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    fd = os.open(keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_key(path: Path) -> Key:
    """The signing key in ``path``."""
    return key_from_json(_read_json(path), path)


def _ring_keys(path: Path) -> list[Key]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigurationError(f"{path}: not a blobledger keyring")
    return [key_from_json(k, path) for k in data["keys"]]


class FileKeyring(Keyring):
    """The keyring in a file, re-read when the file changes: on :meth:`refresh` (the
    projector calls it before each batch, the worker before each command) and when an
    unknown key id shows up, so new and retired keys apply without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = path.stat().st_mtime_ns
        super().__init__(_ring_keys(path), lookup=self._lookup_fresh)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it did."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return False  # gone for a moment (an editor's rename): keep what we have
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        self._keys = {k.key_id: k for k in _ring_keys(self.path)}
        return True

    def _lookup_fresh(self, key_id: str) -> Key | None:
        return self._keys.get(key_id) if self.refresh() else None


def load_keyring(path: Path) -> FileKeyring:
    return FileKeyring(path)


def new_key(principal: str, kind: KeyKind, acts_for: Iterable[str] = ()) -> Key:
    """A fresh key (256-bit secret) for ``principal``, checked against the scope rules."""
    if not principal or principal != principal.strip():
        raise ValidationError(f"principal {principal!r} is empty or has surrounding spaces")
    is_system = principal.startswith(SYSTEM_PREFIX)
    if (kind == "system") != is_system:
        raise ValidationError(
            f"{principal!r}: only system keys act as system: principals, and a system key's "
            "principal starts with system:"
        )
    if is_system and principal not in SYSTEM_ROLES.values():
        # a system: actor passes every ACL: only the processes that need one get a key
        raise ValidationError(
            f"{principal!r} is not a system process; system keys exist for "
            f"{', '.join(sorted(SYSTEM_ROLES.values()))} only"
        )
    acts = frozenset(acts_for)
    if acts and kind != "service":
        raise ValidationError("only a service key acts for other users (--acts-for)")
    if any(a.startswith(SYSTEM_PREFIX) for a in acts):
        raise ValidationError("no key acts for system: principals but their own system key")
    key_id = f"{_ID_PREFIX[kind]}-{secrets.token_hex(8)}"
    return Key(key_id, principal, kind, secrets.token_bytes(32), acts)


def add_keys(keys_dir: Path, keys: Iterable[tuple[str, Key]]) -> None:
    """Append keys to the keyring and write each one's own file (``name`` -> key)."""
    with _locked(keys_dir):
        ring = keys_dir / "keyring.json"
        current = _ring_keys(ring) if ring.exists() else []
        for name, key in keys:
            _write_private(keys_dir / f"{name}.json", key_to_json(key))
            current.append(key)
        _write_private(ring, {"keys": [key_to_json(k) for k in current]})


def ensure_local_keys(settings: Settings) -> Path:
    """The keyring of ``settings``, generated with the operator's and the system keys when
    the directory has none yet (idempotent; safe to call from every process start)."""
    keys_dir = settings.keys_path
    ring = keys_dir / "keyring.json"
    if ring.exists():
        return ring
    with _locked(keys_dir):
        if ring.exists():  # another process won the race
            return ring
        keys = [(OPERATOR, new_key(OPERATOR, "service", [ANY_USER]))]
        keys += [(role, new_key(p, "system")) for role, p in SYSTEM_ROLES.items()]
        for name, key in keys:
            _write_private(keys_dir / f"{name}.json", key_to_json(key))
        _write_private(ring, {"keys": [key_to_json(k) for _, k in keys]})
    return ring


#: a retirement takes effect this long after it is written, so every projector has re-read
#: the keyring (each batch does) before events that occur after it arrive: a live fold
#: and a replay then judge every event the same way
RETIRE_GRACE_US = 2_000_000


def retire_key(keys_dir: Path, key_id: str, *, at: int | None = None) -> Key:
    """Mark ``key_id`` retired ``at`` (default: now + :data:`RETIRE_GRACE_US`): events that
    occur later no longer verify with it; earlier ones still do."""
    with _locked(keys_dir):
        ring = keys_dir / "keyring.json"
        keys = _ring_keys(ring)
        for i, k in enumerate(keys):
            if k.key_id == key_id:
                if k.retired_at is not None:
                    raise ValidationError(f"key {key_id} was already retired")
                when = at if at is not None else now_us() + RETIRE_GRACE_US
                retired = Key(k.key_id, k.principal, k.kind, k.secret, k.acts_for, when)
                keys[i] = retired
                _write_private(ring, {"keys": [key_to_json(x) for x in keys]})
                return retired
    raise ValidationError(f"no key {key_id} in {ring}; `blobledger key list` shows the ids")


def signing_key(settings: Settings, role: str | None = None) -> Key:
    """The key a process signs with (``role``: a system process), generating the local
    keys first when this data directory has none."""
    path = settings.signing_key_path(role)
    if not path.exists() and not settings.key_file:
        ensure_local_keys(settings)
    return load_key(path)


def local_signer(settings: Settings) -> Callable[[str], Key]:
    """actor -> the local key set's key that may act as it (the system keys for their
    processes, the operator's for everyone else): for tools that write events on behalf of
    many actors at once, e.g. a bulk import or a benchmark filling a log."""
    by_principal = {p: signing_key(settings, role) for role, p in SYSTEM_ROLES.items()}
    operator = signing_key(settings)

    def key_for(actor: str) -> Key:
        return by_principal.get(actor, operator)

    return key_for


def keyring(settings: Settings) -> FileKeyring:
    return load_keyring(ensure_local_keys(settings))


__all__ = [
    "OPERATOR",
    "RETIRE_GRACE_US",
    "SYSTEM_ROLES",
    "FileKeyring",
    "add_keys",
    "ensure_local_keys",
    "key_from_json",
    "key_to_json",
    "keyring",
    "load_key",
    "load_keyring",
    "local_signer",
    "new_key",
    "retire_key",
    "signing_key",
]
