"""
Rows as values: a tenant's rows as operators see them (L{TenantDetails},
secrets redacted) and as the relay loads them (L{relay.core.tenant.Tenant},
secrets decrypted).  Each function reads through the row's session.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from cryptography import x509

from relay.core import tenant as tenants
from relay.core.credentials import ClientCertificate, Credentials, OAuthClient
from relay.core.tenant import Rate
from relay.core.urls import UpstreamURL
from relay.store.errors import UndecryptableSecret
from relay.store.models import ACTIVE, TENANT, Plan, Tenant, UpstreamRecord
from relay.store.secrets import KeyRing
from relay.store.values import (
    ClientCertificateInfo,
    LoginInfo,
    NetworkInfo,
    OAuthInfo,
    PlanInfo,
    TenantDetails,
    TenantInfo,
    UpstreamInfo,
)

__all__ = ["details", "planInfo", "relayTenant", "relayUpstream", "tenantInfo", "upstreamInfo"]


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


def _limits(tenant: Tenant | Plan) -> dict[str, Any]:
    """Limits, by their names in L{TenantDetails}, L{PlanInfo} and L{relay.core.tenant.Tenant}."""
    return {
        "maxSize": tenant.max_size,
        "maxRecipients": tenant.max_recipients,
        "rate": _rate(tenant.rate_count, tenant.rate_seconds),
        "rateRecipients": _rate(tenant.rate_recipients_count, tenant.rate_recipients_seconds),
        "maxConcurrency": tenant.max_concurrency,
    }


def planInfo(plan: Plan) -> PlanInfo:
    return PlanInfo(name=plan.name, **_limits(plan))


def _effective(tenant: Tenant, plan: Plan | None) -> dict[str, Any]:
    """The limits the relay applies: the tenant's own, else its plan's."""
    own = _limits(tenant)
    if plan is None:
        return own
    return {key: own[key] if own[key] is not None else value for key, value in _limits(plan).items()}


def tenantInfo(tenant: Tenant) -> TenantInfo:
    """A tenant's own fields."""
    return TenantInfo(**_tenantFields(tenant))


def upstreamInfo(record: UpstreamRecord) -> UpstreamInfo:
    """An upstream as operators see it: C{***} where its password is, its other secrets only said to be there."""
    url = record.url if record.secret is None else UpstreamURL.parse(record.url).withPassword("").redacted()
    oauth = None
    if record.oauth_token_url is not None:
        oauth = OAuthInfo(
            tokenUrl=record.oauth_token_url,
            clientId=record.oauth_client_id or "",
            scope=record.oauth_scope,
            provider=record.oauth_provider,
            grant=_grant(record),
            hasClientSecret=record.oauth_client_secret is not None,
            hasRefreshToken=record.oauth_refresh_token is not None,
        )
    certificate = None
    if record.client_cert is not None:
        try:
            parsed = x509.load_pem_x509_certificate(record.client_cert.encode("ascii"))
            certificate = ClientCertificateInfo(
                subject=parsed.subject.rfc4514_string(), notAfter=parsed.not_valid_after_utc
            )
        except ValueError:
            certificate = ClientCertificateInfo(subject="(unreadable certificate)", notAfter=datetime.min)
    return UpstreamInfo(id=record.id, url=url, priority=record.priority, oauth=oauth, clientCertificate=certificate)


def details(tenant: Tenant) -> TenantDetails:
    """A tenant with its settings and everything that belongs to it, secrets redacted."""
    return TenantDetails(
        **_tenantFields(tenant),
        **_limits(tenant),
        allowBounces=tenant.allow_bounces,
        logins=tuple(LoginInfo(username=login.username, createdAt=login.created_at) for login in tenant.logins),
        upstreams=tuple(upstreamInfo(record) for record in tenant.upstreams),
        domains=tuple(domain.domain for domain in tenant.domains if domain.verified_at is not None),
        networks=tuple(NetworkInfo(network=record.network, noAuth=record.no_auth) for record in tenant.networks),
        blocklist=tuple(blocked.domain for blocked in tenant.blocklist),
        unverifiedDomains=tuple(domain.domain for domain in tenant.domains if domain.verified_at is None),
        plan=tenant.plan,
        trialEndsAt=tenant.trial_ends_at,
        trialMessages=tenant.trial_messages,
    )


def relayTenant(
    tenant: Tenant, keyRing: KeyRing, problems: list[str], plans: dict[str, Plan] | None = None
) -> tenants.Tenant:
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
        domains=frozenset(domain.domain for domain in tenant.domains if domain.verified_at is not None),
        networks=tuple(networks),
        blocklist=frozenset(blocked.domain for blocked in tenant.blocklist),
        allowBounces=tenant.allow_bounces,
        trialEndsAt=tenant.trial_ends_at.timestamp() if tenant.trial_ends_at is not None else None,
        **_effective(tenant, (plans or {}).get(tenant.plan or "")),
    )


def _relayUpstreams(tenant: Tenant, keyRing: KeyRing, problems: list[str]) -> Iterator[tenants.Upstream]:
    """A tenant's usable upstreams, in priority order; the others go to C{problems}."""
    for record in tenant.upstreams:
        try:
            yield relayUpstream(record, keyRing)
        except (ValueError, UndecryptableSecret) as e:
            problems.append(f"tenant {tenant.name!r}: upstream {record.id} left out: {e}")


def relayUpstream(record: UpstreamRecord, keyRing: KeyRing) -> tenants.Upstream:
    """
    An upstream as the relay uses it, every secret decrypted.

    @raise ValueError: its URL does not parse.
    @raise UndecryptableSecret: a secret no key decrypts.
    """
    url = UpstreamURL.parse(record.url)
    password = None if record.secret is None else keyRing.decrypt(record.secret)
    credentials = _credentials(record, keyRing)
    url = url.withPassword(password).withCredentials(credentials).asRestricted(record.origin == TENANT)
    return tenants.Upstream(url=url, priority=record.priority)


def _grant(record: UpstreamRecord) -> str:
    if record.oauth_refresh_token is not None:
        return "refresh_token"
    if record.oauth_client_secret is not None:
        return "client_credentials"
    return "none yet (upstream oauth-consent gives it a refresh token)"


def _credentials(record: UpstreamRecord, keyRing: KeyRing) -> Credentials | None:
    """An upstream's OAuth client and client certificate, decrypted."""

    def decrypted(token: str | None) -> str | None:
        return None if token is None else keyRing.decrypt(token)

    oauth = None
    if record.oauth_token_url is not None:
        oauth = OAuthClient(
            tokenUrl=record.oauth_token_url,
            clientId=record.oauth_client_id or "",
            scope=record.oauth_scope,
            clientSecret=decrypted(record.oauth_client_secret),
            refreshToken=decrypted(record.oauth_refresh_token),
            upstreamId=record.id,
        )
    certificate = None
    if record.client_cert is not None and record.client_key is not None:
        key = keyRing.decrypt(record.client_key)
        certificate = ClientCertificate(chain=record.client_cert.encode("ascii"), key=key.encode("ascii"))
    if oauth is None and certificate is None:
        return None
    return Credentials(oauth=oauth, clientCertificate=certificate)
