"""Where a feature's connection may go: the grant target a request names, and which of the
addresses a granted name resolves to may be used.

Pure: no I/O, no name resolution and no sockets (the mediator in ``_network`` does those
and asks here).

The rules (THREATS.md item 20):

* A request names its destination the way the grant does: the host must be the granted
  host in canonical form (:func:`capsule._tokens._caps.net_target`: lower-case names,
  dotted-quad IPv4, compressed IPv6; decimal, octal, hex, short and IPv4-mapped spellings
  are refused), and the port must be the granted port. A name never matches a grant of an
  address, nor an address a grant of a name.
* An address granted literally may be used whatever it is: a link-local or metadata
  address included, since the app wrote it down.
* A granted name is resolved once, by the mediator, and each address it resolves to is
  screened (:func:`screen`): unspecified, multicast, link-local, reserved and cloud
  metadata addresses are refused, and so are loopback addresses unless the name is
  ``localhost`` (or under ``.localhost``), which in turn must resolve to loopback only: a
  name that suddenly resolves to this machine is DNS rebinding. An address embedding an
  IPv4 address (NAT64, 6to4) is screened as that address too, and an IPv4-mapped one is
  used as the IPv4 address it maps. A screened-out address is still usable when that
  address and port are granted literally as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Final, TypeAlias, final

from capsule._tokens._caps import net_target

__all__ = ["METADATA", "Address", "Destination", "address_target", "destination", "pin", "screen"]

Address: TypeAlias = IPv4Address | IPv6Address

#: cloud instance metadata and host agent addresses: credentials live behind them
METADATA: Final[frozenset[Address]] = frozenset(
    ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
    )
)

_NAT64: Final = IPv6Network("64:ff9b::/96")
_BROADCAST: Final = IPv4Address("255.255.255.255")


@final
@dataclass(frozen=True, slots=True)
class Destination:
    """A requested destination in canonical form: ``target`` is how grants name it."""

    host: str  # a name, or an address without brackets
    port: int
    target: str
    literal: Address | None  # the address, when the host is one


def destination(host: str, port: int) -> Destination:
    """The canonical form of (``host``, ``port``); ConfigError for any other spelling."""
    target = net_target(host, port)
    name = target.rpartition(":")[0]
    bare = name[1:-1] if name.startswith("[") else name
    try:
        literal: Address | None = ip_address(bare)
    except ValueError:
        literal = None
    return Destination(host=bare, port=port, target=target, literal=literal)


def address_target(address: Address, port: int) -> str:
    """How a grant names ``address``:``port`` (``127.0.0.1:80``, ``[::1]:80``)."""
    if isinstance(address, IPv6Address):
        return f"[{address.compressed}]:{port}"
    return f"{address}:{port}"


def pin(address: Address) -> Address:
    """The address a socket connects to: an IPv4-mapped IPv6 address as its IPv4 address."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded(address: IPv6Address) -> IPv4Address | None:
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def screen(address: Address, name: str) -> str | None:
    """Why ``address``, which the granted name ``name`` resolved to, may not be used; None
    when it may. ``address`` is pinned already (see :func:`pin`)."""
    if isinstance(address, IPv6Address):
        if address.scope_id:
            return "is a scoped (link-local) address"
        inner = _embedded(address)
        if inner is not None:  # NAT64 and 6to4 reach the IPv4 address they embed
            why = screen(inner, name)
            return None if why is None else f"embeds {inner}, which {why}"
    if address in METADATA:
        return "is a cloud metadata address"
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_link_local:
        return "is link-local"
    if address.is_multicast or address == _BROADCAST:
        return "is a multicast or broadcast address"
    if address.is_loopback:
        if not _is_localhost(name):
            return "is a loopback address, and only localhost may resolve to one"
        return None
    if _is_localhost(name):
        return "is not a loopback address, and localhost must resolve to one"
    if address.is_reserved:
        return "is a reserved address"
    return None
