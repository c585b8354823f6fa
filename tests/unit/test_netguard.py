"""The SSRF guard's pure rules: which addresses the worker refuses, what an allow-list
opens, which redirects it follows, and what a URL looks like in logs."""

from __future__ import annotations

import ipaddress

import pytest

from blobledger.blob_worker import netguard
from blobledger.blob_worker.failures import UploadFailure
from blobledger.schemas.errors import TransientError


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("fec0::1", "private"),  # deprecated site-local
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),  # reserved, and Python counts it private first
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ],
)
def test_addresses_the_worker_refuses(address: str, kind: str) -> None:
    found = netguard.forbidden_kind(ipaddress.ip_address(address))
    assert found is not None and found.startswith(kind), found


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert netguard.forbidden_kind(ipaddress.ip_address(address)) is None


def test_an_allow_list_opens_its_networks_only() -> None:
    allow = netguard.parse_networks("127.0.0.2/32, 10.0.0.0/8")
    ok = netguard.check_address
    assert ok(ipaddress.ip_address("127.0.0.2"), allow) is None
    assert ok(ipaddress.ip_address("::ffff:127.0.0.2"), allow) is None  # the same host
    assert ok(ipaddress.ip_address("10.9.8.7"), allow) is None
    assert ok(ipaddress.ip_address("127.0.0.1"), allow) == "loopback"
    assert ok(ipaddress.ip_address("169.254.169.254"), allow) == "link-local"
    with pytest.raises(ValueError, match="'nope'"):
        netguard.parse_networks("10.0.0.0/8,nope")


def test_a_name_is_resolved_once_and_only_vetted_addresses_are_kept() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["10.0.0.5", "93.184.216.34", "127.0.0.1"]

    got = netguard.vetted_addresses("mixed.example", 443, (), resolver)
    assert got == ["93.184.216.34"] and calls == [("mixed.example", 443)]


def test_a_name_with_no_acceptable_address_is_forbidden() -> None:
    with pytest.raises(UploadFailure) as e:
        netguard.vetted_addresses("internal.example", 80, (), lambda h, p: ["10.0.0.5", "::1"])
    assert e.value.reason == "source_forbidden"
    assert "10.0.0.5 (private)" in e.value.detail and "::1 (loopback)" in e.value.detail
    # an address literal is checked without asking the resolver
    with pytest.raises(UploadFailure):
        netguard.vetted_addresses("169.254.169.254", 80, (), lambda h, p: ["8.8.8.8"])


def test_a_failed_lookup_is_transient() -> None:
    def broken(host: str, port: int) -> list[str]:
        raise OSError("temporary failure in name resolution")

    with pytest.raises(TransientError):
        netguard.vetted_addresses("flaky.example", 80, (), broken)


@pytest.mark.parametrize(
    "current, location, expected",
    [
        ("http://a.example/x", "/y", "http://a.example/y"),
        ("http://a.example/d/x", "z", "http://a.example/d/z"),
        ("http://a.example/x", "https://b.example/y", "https://b.example/y"),
        ("https://a.example/x", "//b.example/y", "https://b.example/y"),
    ],
)
def test_redirects_that_are_followed(current: str, location: str, expected: str) -> None:
    assert netguard.redirect_target(current, location) == expected


@pytest.mark.parametrize(
    "current, location, reason",
    [
        ("http://a.example/x", "file:///etc/shadow", "source_forbidden"),
        ("http://a.example/x", "gopher://a.example/", "source_forbidden"),
        ("http://a.example/x", "http://u:p@b.example/", "source_forbidden"),
        ("https://a.example/x", "http://a.example/x", "source_forbidden"),  # downgrade
        ("http://a.example/x", "", "http_error"),
        ("http://a.example/x", None, "http_error"),
    ],
)
def test_redirects_that_are_refused(current: str, location: str | None, reason: str) -> None:
    with pytest.raises(UploadFailure) as e:
        netguard.redirect_target(current, location)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://user:s3cret@h.example/p", "http://***@h.example/p"),
        (
            "https://h.example:8443/a?X-Amz-Signature=abc&b=",
            "https://h.example:8443/a?X-Amz-Signature=***&b=***",
        ),
        ("http://[::1]:8080/x#frag", "http://[::1]:8080/x"),
        ("file:///data/in/a.bin", "file:///data/in/a.bin"),
        ("/data/in/user@host.bin", "/data/in/user@host.bin"),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str) -> None:
    assert netguard.redact_url(url) == shown
