"""
Checks of what operators type (the store's inputs): each function returns the value in the form
the store keeps, or raises L{Invalid} saying what is wrong.
"""

from __future__ import annotations

import re

from relay.salesforce import normaliseOrgId
from relay.store.errors import Invalid

__all__ = [
    "company",
    "emailAddress",
    "orgId",
    "password",
    "priority",
    "senderDomain",
    "tenantName",
    "username",
]

_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Two labels at least, and a top-level label that is not all digits: no IP addresses.
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)+(?=[a-z0-9-]*[a-z-]){_LABEL}")
MAX_HOSTNAME = 253  # RFC 1035 §2.3.4, without the final dot
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_TEXT = 255
MAX_PRIORITY = 65535  # as an MX preference, RFC 5321 §5.1


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
        raise Invalid(
            f"invalid sender domain {text!r}: expected a domain name such as example.com or *.example.com"
        )
    return domain
