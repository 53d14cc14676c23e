"""Which client a request is counted against: addresses, IPv6 /64s, trusted proxies and their headers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from api.clients import TrustedProxies, client_key

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1"])


def request(peer: str | None, *headers: tuple[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": None if peer is None else (peer, 50000),
    }
    return Request(scope)


def xff(value: str) -> tuple[str, str]:
    return ("X-Forwarded-For", value)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the same client as its IPv4 address
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same /64, same key
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # next /64, another key
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
        (None, "unknown"),
    ],
)
def test_the_peer_address_is_the_key(peer: str | None, key: str) -> None:
    assert client_key(request(peer), PROXIES) == key


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored() -> None:
    for header in (xff("198.51.100.1"), xff("10.0.0.1, 198.51.100.1"), ("Forwarded", "for=198.51.100.1")):
        assert client_key(request("192.0.2.7", header), PROXIES) == "192.0.2.7"


def test_without_trusted_proxies_no_header_is_read() -> None:
    assert client_key(request("127.0.0.1", xff("198.51.100.1")), TrustedProxies()) == "127.0.0.1"


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("198.51.100.1:4711", "198.51.100.1"),
        ("2001:db8:5:6::9", "2001:db8:5:6::/64"),
        ("[2001:db8:5:6::9]:443", "2001:db8:5:6::/64"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        # The client may write anything on the left; the rightmost untrusted address is theirs.
        ("6.6.6.6, 198.51.100.1", "198.51.100.1"),
        # A chain of trusted proxies is walked through.
        ("198.51.100.1, 10.1.1.1, 10.2.2.2", "198.51.100.1"),
        ("198.51.100.1, 2001:db8:ffff::1", "198.51.100.1"),
        ("203.0.113.5, 198.51.100.1, 10.1.1.1", "198.51.100.1"),
        # Only trusted proxies: the farthest is the client.
        ("10.3.3.3, 10.1.1.1", "10.3.3.3"),
        # Unreadable hops end the walk at the last trusted address.
        ("garbage", "10.0.0.1"),
        ("", "10.0.0.1"),
        ("198.51.100.1, , 10.1.1.1", "10.1.1.1"),
        ("198.51.100.1, unknown", "10.0.0.1"),
        ("198.51.100.1:port", "10.0.0.1"),
        ("[2001:db8::1", "10.0.0.1"),
        ("[2001:db8::1]x", "10.0.0.1"),
        ("198.51.100.1/24", "10.0.0.1"),
        ("300.1.1.1", "10.0.0.1"),
        ("garbage, 198.51.100.1", "198.51.100.1"),  # garbage the client wrote is never reached
    ],
)
def test_x_forwarded_for_from_a_trusted_proxy(header: str, key: str) -> None:
    assert client_key(request("10.0.0.1", xff(header)), PROXIES) == key


def test_several_header_lines_are_one_list() -> None:
    lines = (xff("198.51.100.1"), xff("10.1.1.1"))
    assert client_key(request("10.0.0.1", *lines), PROXIES) == "198.51.100.1"


def test_a_trusted_ipv6_or_mapped_peer_is_trusted() -> None:
    assert client_key(request("2001:db8:ffff:1::2", xff("198.51.100.1")), PROXIES) == "198.51.100.1"
    assert client_key(request("::ffff:10.9.9.9", xff("198.51.100.1")), PROXIES) == "198.51.100.1"


FORWARDED = TrustedProxies.parse(["10.0.0.0/8"], "forwarded")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("for=198.51.100.1", "198.51.100.1"),
        ('for="198.51.100.1:4711";proto=https;by=10.0.0.1', "198.51.100.1"),
        ('For="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::/64"),
        ("for=6.6.6.6, for=198.51.100.1;proto=http, for=10.1.1.1", "198.51.100.1"),
        ("for=unknown", "10.0.0.1"),
        ("for=_hidden", "10.0.0.1"),
        ("proto=https", "10.0.0.1"),
        ("for", "10.0.0.1"),
    ],
)
def test_forwarded_header_when_configured(header: str, key: str) -> None:
    assert client_key(request("10.0.0.1", ("Forwarded", header)), FORWARDED) == key


def test_only_the_configured_header_is_read() -> None:
    """A proxy that writes one header passes the other through from the client."""
    spoofed = ("Forwarded", "for=6.6.6.6")
    assert client_key(request("10.0.0.1", spoofed, xff("198.51.100.1")), PROXIES) == "198.51.100.1"
    assert client_key(request("10.0.0.1", xff("6.6.6.6"), ("Forwarded", "for=198.51.100.1")), FORWARDED) == (
        "198.51.100.1"
    )


def test_bad_proxy_networks_are_refused() -> None:
    for cidr in ("10.0.0.1/8", "nonsense", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            TrustedProxies.parse([cidr])
