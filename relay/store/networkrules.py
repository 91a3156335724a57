"""
The rules for a tenant's client networks.

A plain network only restricts where the tenant's logins may AUTH from, so
tenants may share one (a hosting provider's range).  A no-auth network
makes every client in it act as the tenant without AUTH, so it must be
narrow and unambiguous: no wider than L{NO_AUTH_WIDEST}, and overlapping no
other tenant's network of either kind.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from relay.store.errors import Conflict, Invalid
from relay.store.inputs import IPV4_MAPPED

__all__ = ["NO_AUTH_WIDEST", "OtherNetwork", "checkNetwork"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_AUTH_WIDEST = {4: 16, 6: 48}
"""
The shortest prefix of a no-auth network, by IP version: a /16 is 65,536
IPv4 addresses, far more than the outbound servers of any one sender; a /48
is one site's assignment (RFC 6177 §2).
"""

OtherNetwork = tuple[str, IPNetwork, bool]
"""A network already stored: its tenant's name, the network, and whether it is no-auth."""


def checkNetwork(tenant: str, network: IPNetwork, noAuth: bool, stored: Iterable[OtherNetwork]) -> None:
    """
    Check that a tenant may add a network.

    @param stored: every network stored, of every tenant.
    @raise Invalid: a no-auth network wider than L{NO_AUTH_WIDEST}.
    @raise Conflict: the tenant has it already, or it overlaps a network of
        another tenant where either is no-auth.
    """
    widest = NO_AUTH_WIDEST[network.version]
    if noAuth and network.prefixlen < widest:
        raise Invalid(f"no-auth network {network} is wider than /{widest}: list the senders' own addresses")
    if noAuth and network.version == 6 and network.overlaps(IPV4_MAPPED):
        raise Invalid(f"no-auth network {network} covers the IPv4-mapped addresses {IPV4_MAPPED}: every IPv4 client")
    kind = "no-auth network" if noAuth else "network"
    for owner, other, otherNoAuth in stored:
        if owner == tenant and other == network:
            raise Conflict(f"network {network} already listed for tenant {tenant!r}")
        if owner != tenant and (noAuth or otherNoAuth) and other.version == network.version and other.overlaps(network):
            otherKind = "no-auth network" if otherNoAuth else "network"
            raise Conflict(
                f"{kind} {network} overlaps {otherKind} {other} of tenant {owner!r}: "
                "a no-auth network must overlap no other tenant's network"
            )
