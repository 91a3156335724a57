"""
Checks of what operators type (the store's inputs): each function returns the value in the form
the store keeps, or raises L{Invalid} saying what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from relay.core.orgid import normaliseOrgId
from relay.core.tenant import Rate
from relay.core.tls import loadClientCertificate
from relay.core.urls import UpstreamURL
from relay.store.errors import Invalid
from relay.store.models import ACTIVE, SUSPENDED
from relay.store.values import OAuthSettings

__all__ = [
    "blockedDomain",
    "clientCertificate",
    "company",
    "emailAddress",
    "limit",
    "network",
    "oauthSettings",
    "orgId",
    "password",
    "priority",
    "rate",
    "senderDomain",
    "status",
    "tenantName",
    "username",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4 addresses as IPv6 sockets see them, RFC 4291 §2.5.5.2

_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Two labels at least, and a top-level label that is not all digits: no IP addresses.
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)+(?=[a-z0-9-]*[a-z-]){_LABEL}")
MAX_HOSTNAME = 253  # RFC 1035 §2.3.4, without the final dot
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_TEXT = 255
MAX_PRIORITY = 65535  # as an MX preference, RFC 5321 §5.1
STATUSES = (ACTIVE, SUSPENDED)
MAX_INTEGER = 2**31 - 1  # an SQL INTEGER column
MAX_BIG_INTEGER = 2**63 - 1  # an SQL BIGINT column


def _isHostname(text: str) -> bool:
    return len(text) <= MAX_HOSTNAME and _HOSTNAME.fullmatch(text) is not None


def tenantName(text: str) -> str:
    """A tenant name: 1 to 63 lower-case letters, digits and C{-}, not starting with C{-}."""
    if not _TENANT_NAME.fullmatch(text):
        raise Invalid(
            f"invalid tenant name {text!r}: use 1 to 63 lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )
    return text


def status(text: str) -> str:
    """A tenant's status: C{active} or C{suspended}."""
    if text not in STATUSES:
        raise Invalid(f"invalid status {text!r}: expected {' or '.join(STATUSES)}")
    return text


def emailAddress(text: str) -> str:
    """A contact address C{local@host.domain} (lower-cased domain)."""
    local, at, domain = text.strip().rpartition("@")
    if not at or not 0 < len(local) <= MAX_LOCAL_PART or any(c.isspace() for c in local):
        raise Invalid(f"invalid e-mail address {text!r}: expected name@example.com")
    if not _isHostname(domain.lower()):
        raise Invalid(f"invalid e-mail address {text!r}: {domain!r} is not a domain name")
    return f"{local}@{domain.lower()}"


def company(text: str) -> str:
    """A company name: not blank, at most 255 characters."""
    name = text.strip()
    if not 0 < len(name) <= MAX_TEXT:
        raise Invalid(f"invalid company name {text!r}: expected 1 to {MAX_TEXT} characters")
    return name


def orgId(text: str | None) -> str | None:
    """A Salesforce org id in its 18-character form, or C{None}."""
    if text is None:
        return None
    try:
        return normaliseOrgId(text)
    except ValueError as e:
        raise Invalid(str(e)) from None


def username(text: str) -> str:
    """A login's user name: 1 to 255 printable characters, no white space; case is kept."""
    if not 0 < len(text) <= MAX_TEXT or any(c.isspace() or not c.isprintable() for c in text):
        raise Invalid(f"invalid user name {text!r}: use 1 to {MAX_TEXT} printable characters without spaces")
    return text


def password(text: str) -> str:
    """A login's password: anything but empty."""
    if not text:
        raise Invalid("empty password")
    return text


def priority(number: int) -> int:
    """An upstream priority, 0 to 65535 (lowest is tried first)."""
    if not 0 <= number <= MAX_PRIORITY:
        raise Invalid(f"invalid priority {number}: expected 0 to {MAX_PRIORITY}")
    return number


def senderDomain(text: str) -> str:
    """
    A sender domain, lower-cased: a host name such as C{example.com}, or
    C{*.example.com} for its subdomains.  No bare C{*}, no IP address; use
    the ASCII (C{xn--}) form of internationalised names.
    """
    domain = text.strip().lower()
    if not _isHostname(domain.removeprefix("*.")):
        raise Invalid(f"invalid sender domain {text!r}: expected a domain name such as example.com or *.example.com")
    return domain


def blockedDomain(text: str) -> str:
    """
    A domain whose URLs are refused in message content, lower-cased: a host
    name such as C{example.com}, which covers its subdomains too (so no
    C{*.} form).
    """
    domain = text.strip().lower()
    if domain.startswith("*.") and _isHostname(domain[2:]):
        raise Invalid(f"invalid blocked domain {text!r}: {domain[2:]} covers its subdomains already")
    if not _isHostname(domain):
        raise Invalid(f"invalid blocked domain {text!r}: expected a domain name such as example.com")
    return domain


def network(text: str) -> IPNetwork:
    """
    A client network in CIDR form (C{192.0.2.0/24}, C{2001:db8::/48}); an
    address alone is its C{/32} or C{/128}.  Host bits must be zero, so that
    a typo does not silently widen or move the network.
    """
    address = text.strip()
    try:
        meant = ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise Invalid(f"invalid network {text!r}: expected CIDR such as 192.0.2.0/24 or 2001:db8::/48") from None
    if isinstance(meant, ipaddress.IPv6Network) and meant.subnet_of(IPV4_MAPPED):
        mapped = ipaddress.ip_network(f"{meant.network_address.ipv4_mapped}/{meant.prefixlen - 96}")
        raise Invalid(f"invalid network {text!r}: IPv4 clients are listed as IPv4 networks; did you mean {mapped}?")
    if meant.network_address != ipaddress.ip_address(address.partition("/")[0]):
        raise Invalid(f"invalid network {text!r}: it has host bits set; did you mean {meant}?")
    return meant


def limit(number: int | None, what: str, maximum: int = MAX_INTEGER) -> int | None:
    """A limit of at least 1, or C{None} (not set)."""
    if number is not None and not 0 < number <= maximum:
        raise Invalid(f"invalid {what} {number}: expected 1 to {maximum}, or none")
    return number


def rate(budget: Rate | None, what: str) -> Rate | None:
    """A rate of at least 1 per period (both fitting an SQL INTEGER), or C{None} (not set)."""
    if budget is not None and not (0 < budget.count <= MAX_INTEGER and budget.seconds <= MAX_INTEGER):
        raise Invalid(f"invalid {what} {budget}: expected 1 to {MAX_INTEGER} per period up to {MAX_INTEGER}s")
    return budget


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def oauthSettings(url: UpstreamURL, oauth: OAuthSettings | None) -> OAuthSettings | None:
    """
    An upstream's OAuth client, checked against its URL: C{?auth=xoauth2}
    exactly when there is one; the token URL C{https://} (C{http://} only
    on loopback, for tests); a client id.  One with neither a secret nor a
    refresh token waits for a consent to give it one.
    """
    xoauth2 = url.option("auth", "") == "xoauth2"
    if oauth is None:
        if xoauth2:
            raise Invalid(
                "auth=xoauth2 needs an OAuth client: --oauth-provider or --oauth-token-url and --oauth-client-id"
            )
        return None
    if not xoauth2:
        raise Invalid("an OAuth client is for an SMTP upstream with ?auth=xoauth2 (and the mailbox as its user name)")
    parts = urlsplit(oauth.tokenUrl)
    if not (parts.scheme == "https" and parts.hostname) and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        raise Invalid(f"the OAuth token URL must be https:// (got {oauth.tokenUrl!r})")
    if not oauth.clientId.strip():
        raise Invalid("an OAuth client id is needed (--oauth-client-id)")
    return oauth  # with neither secret nor refresh token, it waits for a consent (upstream oauth-consent)


def clientCertificate(chain: bytes, key: bytes) -> tuple[bytes, bytes]:
    """A client certificate (PEM chain) and its key, checked to load and to match."""
    try:
        loadClientCertificate(chain, key)
    except ValueError as e:
        raise Invalid(str(e)) from None
    return chain, key
