"""Authenticators: who published an event is proven by a key, never declared.

Every event and command carries, in the ``bl-auth`` header, the id of the key that signed
it and an HMAC-SHA256 over its encoded bytes (the Avro single-object encoding, which holds
the whole envelope: actor, event id, object, time). Keys are bound to principals:

- a ``user`` key acts only as its own principal;
- a ``service`` key acts for the end users it lists (``*``: any user), the trusted
  application model (a web service that authenticates its own users);
- a ``system`` key acts only as its own ``system:`` principal (the blob worker's, the
  reaper's); no other key may act as a ``system:`` actor.

HMAC rather than signatures: the projector verifies every event on the fold's hot path,
and an HMAC costs about a microsecond where an Ed25519 verify costs tens; the price is that
whoever verifies also holds the secrets, which here is the operator's own projector.

A retired key still verifies events that occurred before it was retired, so a replay of an
old log gives the same outcomes. Pure module: no I/O.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from blobledger.schemas.events import Event
from blobledger.schemas.permissions import SYSTEM_PREFIX

#: the Kafka header that carries ``<key id>.<base64url MAC>``
AUTH_HEADER = "bl-auth"
#: domain separation: a MAC of blobledger v1 authenticators is over these bytes + the value
_DOMAIN = b"blobledger-auth-v1\n"
#: the acts-for entry that stands for every (non-system) user
ANY_USER = "*"

KeyKind = Literal["user", "service", "system"]
KEY_KINDS: tuple[KeyKind, ...] = ("user", "service", "system")
#: why an event does not verify (logged; the fold's outcome reason is always
#: ``unauthenticated``)
UNSIGNED = "unsigned"
MALFORMED = "malformed authenticator"
UNKNOWN_KEY = "unknown key"
BAD_MAC = "bad signature"
RETIRED = "retired key"
OUT_OF_SCOPE = "key may not act as this actor"


@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    principal: str
    kind: KeyKind
    secret: bytes = field(repr=False)
    #: service keys: the users this key may act for (``*``: any user)
    acts_for: frozenset[str] = frozenset()
    #: microseconds since the epoch; events that occurred later no longer verify
    retired_at: int | None = None

    def may_act_as(self, actor: str) -> bool:
        """The one scope rule, shared by the client's check and the projector's."""
        if self.kind == "system":
            return actor == self.principal and actor.startswith(SYSTEM_PREFIX)
        if actor.startswith(SYSTEM_PREFIX):
            return False
        if self.kind == "user":
            return actor == self.principal
        return actor == self.principal or ANY_USER in self.acts_for or actor in self.acts_for


def mac(secret: bytes, value: bytes) -> bytes:
    # hmac.digest: the one-shot C path, about twice as fast as hmac.new(...).digest()
    return hmac.digest(secret, _DOMAIN + value, "sha256")


def _tag(secret: bytes, value: bytes) -> bytes:
    return base64.urlsafe_b64encode(mac(secret, value)).rstrip(b"=")


def authenticator(key: Key, value: bytes) -> bytes:
    """The ``bl-auth`` header value for ``value`` signed with ``key``."""
    return key.key_id.encode() + b"." + _tag(key.secret, value)


RecordHeaders = Mapping[str, bytes | str | None] | Iterable[tuple[str, bytes | str | None]] | None


def header_of(headers: RecordHeaders) -> bytes | None:
    """The authenticator among a record's headers (a list: the last one wins)."""
    found: bytes | str | None = None
    if isinstance(headers, Mapping):
        found = headers.get(AUTH_HEADER)
    else:
        for name, value in headers or ():
            if name == AUTH_HEADER:
                found = value
    return found.encode() if isinstance(found, str) else found


class Keyring:
    """The keys that verify events. ``lookup`` resolves a key id the ring does not hold
    (e.g. re-reading a keyring file a new key was added to); it must be deterministic for
    a given key id: keys are added and retired, never changed or removed."""

    def __init__(
        self, keys: Iterable[Key] = (), *, lookup: Callable[[str], Key | None] | None = None
    ) -> None:
        self._keys: dict[str, Key] = {k.key_id: k for k in keys}
        self._lookup = lookup

    @property
    def keys(self) -> Mapping[str, Key]:
        return self._keys

    def refresh(self) -> bool:
        """Pick up keys added or retired since the last look (a keyring kept in memory
        has nothing to re-read); True when something changed."""
        return False

    def get(self, key_id: str) -> Key | None:
        key = self._keys.get(key_id)
        if key is None and self._lookup is not None:
            key = self._lookup(key_id)
            if key is not None:
                self._keys[key_id] = key
        return key

    def verify_event(
        self,
        value: bytes,
        headers: RecordHeaders,
        event: Event,
    ) -> str | None:
        """:meth:`verify` for a record read from the log: its encoded ``value``, its
        ``headers`` and the ``event`` decoded from the value."""
        env = event.envelope
        return self.verify(value, header_of(headers), env.actor, env.occurred_at)

    def verify(
        self, value: bytes, header: bytes | None, actor: str, occurred_at: int
    ) -> str | None:
        """None when ``header`` proves that a key allowed to act as ``actor`` signed
        ``value`` (and was not retired when it occurred); else why not."""
        if not header:
            return UNSIGNED
        key_id, dot, tag = header.partition(b".")
        if not dot or not key_id or not tag:
            return MALFORMED
        try:
            kid = key_id.decode("ascii")
        except UnicodeDecodeError:
            return MALFORMED
        key = self.get(kid)
        if key is None:
            return UNKNOWN_KEY
        # compare the encoded tags: no decoding of attacker-chosen base64 on the hot path
        if not hmac.compare_digest(_tag(key.secret, value), tag):
            return BAD_MAC
        if key.retired_at is not None and occurred_at > key.retired_at:
            return RETIRED
        if not key.may_act_as(actor):
            return OUT_OF_SCOPE
        return None
