"""Where an http(s) source may lead the worker: the SSRF guard.

The worker runs inside the deployment's network and fetches whatever URL a command names,
so without a guard any client could make it read loopback services (the broker's log
store, Postgres' HTTP neighbours), private networks or the cloud metadata endpoint
(169.254.169.254) and store the answer as a blob it can read back. Here:

* :func:`forbidden_kind` says why an address is off limits (loopback, private,
  link-local, multicast, reserved, unspecified, anything not globally routable), looking
  through the IPv6 forms that reach an IPv4 host (IPv4-mapped, -compatible, 6to4, NAT64);
* :func:`vetted_addresses` resolves a name once and keeps the addresses that pass (or
  that an operator allowed, ``source_allow_networks``); the caller connects to one of
  those, never to the name again, so a second DNS answer (rebinding) cannot move it;
* :func:`redirect_target` checks every redirect hop before it is followed;
* :func:`redact_url` is the form of a URL that may appear in logs and events.

Pure apart from :func:`system_resolver`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, urljoin, urlsplit

from blobledger.blob_worker.failures import UploadFailure
from blobledger.schemas.errors import TransientError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: (host, port) -> the addresses the name resolves to, as text
Resolver = Callable[[str, int], list[str]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDR networks or single addresses; ValueError names a bad entry."""
    out: list[Network] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not an address or CIDR network") from e
    return tuple(out)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address reaches: IPv4-mapped (``::ffff:a.b.c.d``),
    IPv4-compatible (``::a.b.c.d``), 6to4 (``2002:aabb:ccdd::``) or NAT64
    (``64:ff9b::a.b.c.d``); None for a plain IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    if ip in _NAT64 or 1 < value < 2**32:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def forbidden_kind(ip: Address) -> str | None:
    """Why the worker must not connect to ``ip`` for a client, or None (a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            kind = forbidden_kind(inner)
            return None if kind is None else f"{kind} (IPv4 {inner} inside {ip})"
        if ip.is_site_local:
            return "private"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def is_allowed(ip: Address, allow: Iterable[Network]) -> bool:
    """``ip`` (or the IPv4 host it stands for) is in a network the operator allowed."""
    forms: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            forms.append(inner)
    return any(form.version == net.version and form in net for net in allow for form in forms)


def check_address(ip: Address, allow: Iterable[Network]) -> str | None:
    """None if the worker may connect to ``ip``; else why not."""
    if is_allowed(ip, allow):
        return None
    return forbidden_kind(ip)


def vetted_addresses(
    host: str, port: int, allow: Iterable[Network], resolver: Resolver
) -> list[str]:
    """Resolve ``host`` once and return the addresses the worker may connect to, in the
    resolver's order. None passing is ``source_forbidden``."""
    allow = tuple(allow)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = resolver(host, port)
        except OSError as e:
            raise TransientError(f"cannot resolve {host}: {e}") from e
    good: list[str] = []
    refused: list[str] = []
    for text in answers:
        ip = ipaddress.ip_address(text)
        kind = check_address(ip, allow)
        if kind is None:
            good.append(text)
        else:
            refused.append(f"{text} ({kind})")
    if not good:
        shown = ", ".join(refused) or "no address"
        raise UploadFailure(
            "source_forbidden",
            f"{host} resolves to {shown}: the worker does not fetch from such addresses "
            "for a client (an operator can allow networks: source_allow_networks)",
        )
    return good


def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host``, each address once, in its order."""
    seen: dict[str, None] = {}
    for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def redirect_target(current: str, location: str | None) -> str:
    """The URL a redirect from ``current`` leads to, if the worker may follow it: http(s)
    only (never ``file:``), no credentials in it, no https -> http downgrade. The
    address is vetted when that hop is fetched, like the first."""
    if not location or not location.strip():
        raise UploadFailure("http_error", f"{redact_url(current)}: redirect without a Location")
    target = urljoin(current, location.strip())
    try:
        parts = urlsplit(target)
        has_credentials = parts.username is not None or parts.password is not None
        host = parts.hostname
    except ValueError as e:
        raise UploadFailure("http_error", f"{redact_url(current)}: bad redirect target") from e
    if parts.scheme not in ("http", "https"):
        raise UploadFailure(
            "source_forbidden",
            f"{redact_url(current)} redirects to a {parts.scheme or 'schemeless'}: URL; "
            "only http(s) redirects are followed",
        )
    if has_credentials:
        raise UploadFailure(
            "source_forbidden", f"{redact_url(current)} redirects to a URL with credentials"
        )
    if not host:
        raise UploadFailure("http_error", f"{redact_url(current)} redirects to a URL without host")
    if urlsplit(current).scheme == "https" and parts.scheme == "http":
        raise UploadFailure(
            "source_forbidden", f"{redact_url(current)} redirects from https to plain http"
        )
    return target


def redact_url(url: str) -> str:
    """``url`` as it may be logged or stored: user info and query values masked (a
    presigned URL's signature is a credential too), fragment dropped. Paths pass as they
    are."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return "<unparseable URL>"
    if parts.scheme in ("", "file"):
        return url
    netloc = "" if host is None else f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if userinfo:
        netloc = "***@" + netloc
    query = ""
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = "?" + ("&".join(f"{k}=***" for k, _ in pairs) if pairs else "***")
    return f"{parts.scheme}://{netloc}{parts.path}{query}"
