"""What a blob worker may read on a client's behalf, and how slow a source may be (pure,
but for ``from_settings`` resolving the roots to real paths).

A command is untrusted input: whoever can publish one names the source, and the worker
reads it with its own rights. So the worker reads local files only under the configured
source roots (plus the spool entry of the upload at hand, where clients put files that
live elsewhere), fetches http(s) only from public addresses or allowed networks, and
sends a source credential only to the host it was configured for. This module holds that
policy and its pure rules; :mod:`.sources` and :mod:`.netguard` apply them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from blobledger.blob_worker.netguard import Network, parse_networks
from blobledger.infra.settings import Settings
from blobledger.schemas.errors import ConfigurationError

#: redirects followed per source before it is refused
MAX_REDIRECTS = 5


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both absolute and normalized: compare real paths).
    Lexical on purpose: ``/data/inbox2`` is not under ``/data/inbox``."""
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root + os.sep)


def under_any(path: str, roots: Sequence[str]) -> bool:
    return any(within(path, root) for root in roots)


def is_upload_id(value: str) -> bool:
    """A canonical UUID: the only upload id that may name a spool entry (no ``..``)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def parse_header_line(host: str, line: str) -> tuple[str, str]:
    """``"Name: value"`` -> (name, value); ConfigurationError for anything else (a header
    line that could inject another header included)."""
    name, sep, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in line for c in "\r\n\0") or " " in name:
        raise ConfigurationError(
            f"BLOBLEDGER_SOURCE_HEADERS[{host!r}] must be one header line 'Name: value'"
        )
    return name, value


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """The worker's source boundary. The default reads no local file and fetches public
    addresses only."""

    #: real paths of the directories file sources may live under
    roots: tuple[str, ...] = ()
    #: real path of the spool; ``<spool>/<upload id>`` is a root of that upload only
    spool: str | None = None
    allow_networks: tuple[Network, ...] = ()
    #: (host or host:port, header name, value), sent to that host only
    headers: tuple[tuple[str, str, str], ...] = ()
    max_redirects: int = MAX_REDIRECTS
    #: bytes/s an http(s) source must average over each read-timeout window it is waited
    #: on (a slow drip holds no transfer); 0: no floor (:mod:`.pace`)
    min_rate: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> SourcePolicy:
        try:
            allow = parse_networks(s.source_allow_networks)
        except ValueError as e:
            raise ConfigurationError(f"BLOBLEDGER_SOURCE_ALLOW_NETWORKS: {e}") from e
        headers = tuple(
            (host.strip().lower(), *parse_header_line(host, line))
            for host, line in s.source_headers.items()
        )
        spool = s.spool_dir
        return cls(
            roots=tuple(os.path.realpath(p) for p in s.source_root_dirs),
            spool=os.path.realpath(spool) if spool is not None else None,
            allow_networks=allow,
            headers=headers,
            min_rate=max(0, s.http_min_bytes_per_second),
        )

    def roots_for(self, upload_id: str) -> tuple[str, ...]:
        """The directories a file source of this upload may live under: the configured
        roots and the upload's own spool entry, never another upload's."""
        if self.spool is not None and is_upload_id(upload_id):
            return (*self.roots, os.path.join(self.spool, upload_id))
        return self.roots

    def headers_for(self, host: str, port: int) -> dict[str, str]:
        """The configured headers for ``host`` (``host:port`` entries first): a redirect to
        another host never carries them."""
        host = host.lower()
        exact = f"{host}:{port}"
        chosen = [h for h in self.headers if h[0] == exact] or [
            h for h in self.headers if h[0] == host
        ]
        return {name: value for _, name, value in chosen}
