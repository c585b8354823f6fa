"""Permissions and the one rule that decides them (pure).

Shared vocabulary: the fold enforces it on the log, the client checks it first for clear
errors, the queries filter reads by it. ACLs are themselves events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PERMISSIONS = frozenset({"read", "write", "admin"})
OWNER_PERMISSIONS = frozenset(PERMISSIONS)
EVERYONE = "*"
#: actors allowed to finalize or roll back uploads (workers and the reaper)
SYSTEM_PREFIX = "system:"

#: which held permissions grant a requested one
IMPLIED = {"read": ("read", "write", "admin"), "write": ("write", "admin"), "admin": ("admin",)}
_GRANTING = {k: frozenset(v) for k, v in IMPLIED.items()}


def may(acl: Mapping[str, frozenset[str]] | Mapping[str, Any], actor: str, permission: str) -> bool:
    """True when ``actor`` (or everyone, ``*``) holds ``permission`` on an object with
    this ACL. The one rule shared by the client's check and the fold's."""
    if actor.startswith(SYSTEM_PREFIX):
        return True
    granting = _GRANTING[permission]
    perms = acl.get(actor)
    if perms and not granting.isdisjoint(perms):
        return True
    perms = acl.get(EVERYONE)
    return bool(perms and not granting.isdisjoint(perms))
