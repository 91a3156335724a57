"""
What the store's queries take and return: plain frozen values, never ORM
objects, so callers hold no session and no secret.

Usage is counted per tenant and UTC day: the relay adds up L{UsageDelta}s in
memory and hands them to the store in batches
(L{relay.store.repository.Store.recordUsage}), which adds them to the day's
totals; L{relay.store.repository.Store.usage} reads the totals back as
L{UsageRow}s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date, datetime

from relay.core.tenant import Rate

__all__ = [
    "COUNTERS",
    "ClientCertificateInfo",
    "LoginInfo",
    "NetworkInfo",
    "OAuthInfo",
    "OAuthSettings",
    "PlanInfo",
    "DomainChallenge",
    "SecretRotation",
    "TenantDetails",
    "TenantExport",
    "TenantInfo",
    "UpstreamInfo",
    "UsageDelta",
    "UsageRow",
]


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """
    Counts to add to a tenant's usage of one day.

    @ivar day: the UTC day the messages were relayed (or refused) on.
    @ivar relayed: messages the upstream accepted.
    @ivar recipients: recipients of those messages the upstream accepted.
    @ivar bytes: octets of those messages.
    @ivar rejected: messages refused with a 5xx (policy or upstream).
    @ivar failed: messages tempfailed (4xx) or aborted (client gone).
    """

    tenant: str
    day: date
    relayed: int = 0
    recipients: int = 0
    bytes: int = 0
    rejected: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class UsageRow(UsageDelta):
    """The totals of a tenant's day, as stored."""


COUNTERS = tuple(field.name for field in fields(UsageDelta))[2:]
"""The names of the counts, after C{tenant} and C{day}."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantInfo:
    """
    A tenant's own fields.

    @ivar orgId: the 18-character Salesforce org id, or C{None}.
    @ivar status: C{"active"} or C{"suspended"}.
    @ivar createdAt: when it was added (UTC).
    """

    name: str
    email: str
    company: str
    orgId: str | None
    status: str
    createdAt: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginInfo:
    """
    One login as shown to operators: never its password hash.

    @ivar createdAt: when it was added (UTC).
    """

    username: str
    createdAt: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthSettings:
    """
    An upstream's OAuth 2.0 client, as given to L{relay.store.repository.Store.addUpstream}.

    @ivar provider: the C{--oauth-provider} preset it was filled from
        (C{microsoft:TENANT_ID}, C{google}), kept for the consent flow.
    @ivar clientSecret: for confidential clients (and the client-credentials grant).
    @ivar refreshToken: a user's consent (the refresh-token grant); may be
        given later by C{upstream oauth-consent}.
    """

    tokenUrl: str
    clientId: str
    scope: str | None = None
    provider: str | None = None
    clientSecret: str | None = field(default=None, repr=False)
    refreshToken: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthInfo:
    """
    An upstream's OAuth client as operators see it: its secrets only said
    to be there (C{hasClientSecret}, C{hasRefreshToken}).

    @ivar grant: C{client_credentials} or C{refresh_token}.
    """

    tokenUrl: str
    clientId: str
    scope: str | None
    provider: str | None
    grant: str
    hasClientSecret: bool
    hasRefreshToken: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCertificateInfo:
    """The client certificate an upstream is given: what it names and when it expires (its key never shown)."""

    subject: str
    notAfter: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamInfo:
    """
    One upstream as shown to operators.

    @ivar id: names it to C{upstream remove} and C{upstream test}.
    @ivar url: the URL with its password redacted (C{***}).
    @ivar priority: lowest is tried first.
    @ivar oauth: its OAuth client, secrets withheld.
    @ivar clientCertificate: its client certificate, key withheld.
    """

    id: int
    url: str
    priority: int
    oauth: OAuthInfo | None = None
    clientCertificate: ClientCertificateInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkInfo:
    """
    A client network of a tenant.

    @ivar network: normalised CIDR, such as C{192.0.2.0/24}.
    @ivar noAuth: clients from it need no AUTH.
    """

    network: str
    noAuth: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantDetails(TenantInfo):
    """
    A tenant with its settings and what belongs to it.  A limit or rate of
    C{None} is not set (the relay's own limit applies).

    @ivar maxSize: largest message in octets.
    @ivar maxRecipients: recipients per message.
    @ivar rate: messages per period.
    @ivar rateRecipients: recipients per period.
    @ivar maxConcurrency: transactions in flight at once.
    @ivar allowBounces: the null sender C{<>} is allowed.
    @ivar logins: by user name.
    @ivar upstreams: in the order they are tried.
    @ivar domains: the allowed sender domains, sorted.
    @ivar networks: the client networks, sorted.
    @ivar blocklist: the domains refused in URLs of message content, sorted.
    @ivar unverifiedDomains: domains the tenant added that wait for their
        DNS proof (they do not count yet), sorted.
    @ivar plan: the plan whose limits apply where the tenant sets none.
    @ivar trialEndsAt: while on trial, when it ends.
    @ivar trialMessages: the messages the trial allows in all.
    """

    maxSize: int | None
    maxRecipients: int | None
    rate: Rate | None
    rateRecipients: Rate | None
    maxConcurrency: int | None
    allowBounces: bool
    logins: tuple[LoginInfo, ...]
    upstreams: tuple[UpstreamInfo, ...]
    domains: tuple[str, ...]
    networks: tuple[NetworkInfo, ...]
    blocklist: tuple[str, ...]
    unverifiedDomains: tuple[str, ...] = ()
    plan: str | None = None
    trialEndsAt: datetime | None = None
    trialMessages: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanInfo:
    """A named set of limits (C{None}: not set by the plan)."""

    name: str
    maxSize: int | None = None
    maxRecipients: int | None = None
    rate: Rate | None = None
    rateRecipients: Rate | None = None
    maxConcurrency: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainChallenge:
    """
    How a tenant proves a sender domain is theirs: a TXT record C{name}
    holding C{value}.
    """

    domain: str
    name: str
    value: str
    verified: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantExport:
    """
    Everything stored about a tenant, for a data subject's request: its
    details and its usage by day.

    @ivar redacted: what is withheld: login password hashes (C{logins} carry
        none) and upstream passwords (C{***} in their URLs).
    """

    tenant: TenantDetails
    usage: tuple[UsageRow, ...]
    redacted: tuple[str, ...] = (
        "login password hashes",
        "upstream passwords",
        "OAuth client secrets and refresh tokens",
        "client certificate keys",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRotation:
    """
    What re-encrypting the stored secrets did.

    @ivar reencrypted: how many secrets now use the primary key.
    @ivar undecryptable: the ids of the upstreams whose secret no key
        decrypts, left as they were.
    """

    reencrypted: int
    undecryptable: tuple[int, ...]
