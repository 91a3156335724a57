"""
Rows as values: a tenant's rows as operators see them (L{TenantDetails},
secrets redacted) and as the relay loads them (L{relay.core.tenant.Tenant},
secrets decrypted).  Each function reads through the row's session.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from relay.core import tenant as tenants
from relay.core.tenant import Rate
from relay.core.urls import UpstreamURL
from relay.store.errors import UndecryptableSecret
from relay.store.models import ACTIVE, Tenant, UpstreamRecord
from relay.store.secrets import KeyRing
from relay.store.values import LoginInfo, NetworkInfo, TenantDetails, TenantInfo, UpstreamInfo

__all__ = ["details", "relayTenant", "tenantInfo", "upstreamInfo"]


def _tenantFields(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "email": tenant.email,
        "company": tenant.company,
        "orgId": tenant.org_id,
        "status": tenant.status,
        "createdAt": tenant.created_at,
    }


def _rate(count: int | None, seconds: int | None) -> Rate | None:
    return None if count is None or seconds is None else Rate(count, seconds)


def _limits(tenant: Tenant) -> dict[str, Any]:
    """A tenant's limits and settings, by their names in L{TenantDetails} and L{relay.core.tenant.Tenant}."""
    return {
        "maxSize": tenant.max_size,
        "maxRecipients": tenant.max_recipients,
        "rate": _rate(tenant.rate_count, tenant.rate_seconds),
        "rateRecipients": _rate(tenant.rate_recipients_count, tenant.rate_recipients_seconds),
        "maxConcurrency": tenant.max_concurrency,
        "allowBounces": tenant.allow_bounces,
    }


def tenantInfo(tenant: Tenant) -> TenantInfo:
    """A tenant's own fields."""
    return TenantInfo(**_tenantFields(tenant))


def upstreamInfo(record: UpstreamRecord) -> UpstreamInfo:
    """An upstream as operators see it: C{***} where its password is."""
    url = record.url if record.secret is None else UpstreamURL.parse(record.url).withPassword("").redacted()
    return UpstreamInfo(id=record.id, url=url, priority=record.priority)


def details(tenant: Tenant) -> TenantDetails:
    """A tenant with its settings and everything that belongs to it, secrets redacted."""
    return TenantDetails(
        **_tenantFields(tenant),
        **_limits(tenant),
        logins=tuple(LoginInfo(username=login.username, createdAt=login.created_at) for login in tenant.logins),
        upstreams=tuple(upstreamInfo(record) for record in tenant.upstreams),
        domains=tuple(domain.domain for domain in tenant.domains),
        networks=tuple(NetworkInfo(network=record.network, noAuth=record.no_auth) for record in tenant.networks),
        blocklist=tuple(blocked.domain for blocked in tenant.blocklist),
    )


def relayTenant(tenant: Tenant, keyRing: KeyRing, problems: list[str]) -> tenants.Tenant:
    """
    A tenant as the relay sees it, upstream passwords decrypted.  What
    cannot be read is left out and said in C{problems}: an upstream whose
    URL does not parse or whose password does not decrypt; a network that
    does not parse, and then the tenant is suspended (leaving the network
    out could open the tenant to every address).
    """
    networks = []
    for record in tenant.networks:
        try:
            networks.append(tenants.Network(ipaddress.ip_network(record.network), record.no_auth))
        except ValueError as e:
            problems.append(f"tenant {tenant.name!r}: suspended: network {record.id} cannot be read: {e}")
    return tenants.Tenant(
        name=tenant.name,
        active=tenant.status == ACTIVE and len(networks) == len(tenant.networks),
        orgId=tenant.org_id,
        upstreams=tuple(_relayUpstreams(tenant, keyRing, problems)),
        domains=frozenset(domain.domain for domain in tenant.domains),
        networks=tuple(networks),
        blocklist=frozenset(blocked.domain for blocked in tenant.blocklist),
        **_limits(tenant),
    )


def _relayUpstreams(tenant: Tenant, keyRing: KeyRing, problems: list[str]) -> Iterator[tenants.Upstream]:
    """A tenant's usable upstreams, in priority order; the others go to C{problems}."""
    for record in tenant.upstreams:
        try:
            url = UpstreamURL.parse(record.url)
            password = None if record.secret is None else keyRing.decrypt(record.secret)
        except (ValueError, UndecryptableSecret) as e:
            problems.append(f"tenant {tenant.name!r}: upstream {record.id} left out: {e}")
            continue
        yield tenants.Upstream(url=url.withPassword(password), priority=record.priority)
