"""
Tenants as the relay sees them while relaying: immutable values loaded from
the store into memory, so that no message waits on a database query.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from relay.core.urls import UpstreamURL

__all__ = ["Login", "Network", "Rate", "Snapshot", "Tenant", "Upstream"]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Rate:
    """
    A budget: at most C{count} per C{seconds}, written C{100/1m}, C{10000/1d}
    or C{5/30s} (units s, m, h, d).
    """

    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """
        @raise ValueError: not of the form COUNT/[N]UNIT with a positive period.
        """
        m = _RATE.match(text)
        if m is None:
            raise ValueError(f"not a rate: {text!r} (expected e.g. 100/1m, 10000/1d)")
        seconds = int(m.group(2) or "1") * _UNIT[m.group(3)]
        if seconds <= 0:
            raise ValueError(f"not a rate: {text!r} (the period must be positive)")
        return cls(int(m.group(1)), seconds)

    def __str__(self) -> str:
        for unit in "dhm":
            if self.seconds % _UNIT[unit] == 0:
                return f"{self.count}/{self.seconds // _UNIT[unit]}{unit}"
        return f"{self.count}/{self.seconds}s"


@dataclass(frozen=True, slots=True)
class Network:
    """
    A client network of a tenant.

    @ivar network: the addresses it covers.
    @ivar noAuth: clients from it act as the tenant without AUTH (fixed-address
        senders); otherwise it only restricts where AUTH is accepted from.
    """

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    noAuth: bool = False


@dataclass(frozen=True, slots=True)
class Upstream:
    """
    One of a tenant's upstreams.

    @ivar url: where to deliver, password included (decrypted).
    @ivar priority: like MX preference: lowest first; equal ones share load.
    """

    url: UpstreamURL
    priority: int = 10


@dataclass(frozen=True, slots=True)
class Tenant:
    """
    A tenant's relaying configuration.

    @ivar name: unique short name, used in logs and metric labels.
    @ivar active: C{False} when suspended: its clients cannot send.
    @ivar orgId: the Salesforce organisation id (18 characters) or C{None}.
    @ivar upstreams: in priority order.
    @ivar domains: allowed sender domains, lower case; C{*.example.com} means
        the subdomains of example.com.
    @ivar maxSize: largest message in octets, or C{None} for the relay's limit.
    @ivar maxRecipients: recipients per message, or C{None} for no cap.
    @ivar rate: messages per period, or C{None}.
    @ivar rateRecipients: recipients per period, or C{None}.
    @ivar maxConcurrency: transactions in flight at once, or C{None}.
    @ivar allowBounces: the null sender C{<>} is allowed.
    @ivar networks: the client networks; when any is not C{noAuth}, AUTH is
        only accepted from the networks listed.
    @ivar blocklist: URL domains refused in message content, lower case.
    @ivar trialEndsAt: while on trial, when it ends (seconds since the
        epoch); past it, mail is refused until the tenant has a plan.
    """

    name: str
    active: bool = True
    orgId: str | None = None
    upstreams: tuple[Upstream, ...] = ()
    domains: frozenset[str] = frozenset()
    maxSize: int | None = None
    maxRecipients: int | None = None
    rate: Rate | None = None
    rateRecipients: Rate | None = None
    maxConcurrency: int | None = None
    allowBounces: bool = False
    networks: tuple[Network, ...] = ()
    blocklist: frozenset[str] = frozenset()
    trialEndsAt: float | None = None


@dataclass(frozen=True, slots=True)
class Login:
    """
    SMTP AUTH credentials: which tenant a user name acts for, and the hash
    its password must match.
    """

    username: str
    tenant: str
    passwordHash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    Everything the relay needs from the store, as of one store generation.

    @ivar generation: increases with every change made through the store.
    @ivar problems: one line for each part of the store left out because it
        could not be read (such as an upstream whose password does not
        decrypt), for the relay to log.
    """

    generation: int
    tenants: dict[str, Tenant] = field(default_factory=dict)
    logins: dict[str, Login] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
