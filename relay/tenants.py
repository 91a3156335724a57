"""
Tenants as the relay sees them while relaying: immutable values loaded from
the store into memory, so that no message waits on a database query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.urls import UpstreamURL

__all__ = ["Login", "Snapshot", "Tenant", "Upstream"]


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
    """

    name: str
    active: bool = True
    orgId: str | None = None
    upstreams: tuple[Upstream, ...] = ()
    domains: frozenset[str] = frozenset()


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
