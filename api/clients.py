"""Who is asking: the key that rate limits count a request against.

The key is the client's address: an IPv4 address as such, an IPv6 address by its /64 (one subscriber
usually holds a whole /64, so single addresses would let them multiply their budget). Behind proxies the
peer is the proxy, so the forwarding header names the client, but only when the peer is a configured
trusted proxy: anyone else can write any header. The header is read from the right (the nearest hop)
and the first address that is not itself a trusted proxy is the client; a hop that cannot be read ends
the walk at the last address that could be trusted.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from starlette.requests import Request

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose forwarding header is believed, and which header they write. Only one header is
    read: a proxy that writes one passes the other through from the client untouched."""

    networks: tuple[Network, ...] = ()
    header: str = "x-forwarded-for"

    @classmethod
    def parse(cls, cidrs: Iterable[str], header: str = "x-forwarded-for") -> TrustedProxies:
        """From CIDRs such as `10.0.0.0/8` or `2001:db8::1` (ValueError names a bad one); `header` is
        `x-forwarded-for` or `forwarded` (RFC 7239)."""
        return cls(tuple(ipaddress.ip_network(cidr.strip()) for cidr in cidrs), header)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def client_key(request: Request, proxies: TrustedProxies) -> str:
    """The rate-limit key of `request`'s client (see the module docstring)."""
    client = request.scope.get("client")
    peer = client[0] if client else ""
    if not proxies.networks:  # the edge faces its clients: every request counts as its peer
        return peer_key(peer)
    address = parse_address(peer)
    if address is None or not proxies.trusts(address):
        return peer_key(peer)
    header = ",".join(request.headers.getlist(proxies.header))
    return address_key(walk_hops(address, hops_from_right(header, proxies.header), proxies))


def walk_hops(peer: Address, hops: Iterator[Address | None], proxies: TrustedProxies) -> Address:
    """Follow the forwarding chain from `peer` while each address along it is a trusted proxy. A hop is
    read only once the one after it is trusted, so what a client wrote itself is never even parsed."""
    address = peer
    while proxies.trusts(address):
        hop = next(hops, None)
        if hop is None:
            break
        address = hop
    return address


# peer_key, address_key and parse_address are pure and see the same addresses over and over: remembered,
# a repeat costs a dictionary look-up instead of parsing and formatting (10 µs for an IPv6 address).
@functools.lru_cache(maxsize=4096)
def peer_key(peer: str) -> str:
    """The key of a client that is its own peer (the text of the peer's address, as the server saw it)."""
    address = parse_address(peer)
    if address is None:
        return peer or "unknown"
    return address_key(address)


@functools.lru_cache(maxsize=4096)
def address_key(address: Address) -> str:
    if address.version == 4:
        return str(address)
    return f"{ipaddress.IPv6Address(int(address) >> 64 << 64)}/64"


def hops_from_right(header: str, name: str) -> Iterator[Address | None]:
    """The addresses a forwarding header lists, nearest hop first; None for one that cannot be read."""
    if not header.strip():
        return
    for element in reversed(header.split(",")):
        yield parse_address(forwarded_for(element) if name == "forwarded" else element)


def forwarded_for(element: str) -> str:
    """The `for=` parameter of one RFC 7239 `Forwarded` element (`for=192.0.2.1;proto=https`), or ""."""
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return value
    return ""


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address | None:
    """An address as proxies write them: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`,
    optionally in double quotes (`Forwarded`); an IPv4-mapped IPv6 address is its IPv4 address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
