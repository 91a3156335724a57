"""
Sender domains: a tenant sends only as its own domains (Salesforce's email
domain filter semantics: C{example.com} exactly, C{*.example.com} its
subdomains).  Both the envelope sender (MAIL FROM) and every author in the
C{From:} header must be allowed.
"""

from __future__ import annotations

from relay.core.address import AddressError, Mailbox, domainAllowed, parseMailboxList
from relay.plugin import CONTINUE, Policy, reject

__all__ = ["SenderDomainPolicy"]

NOT_ALLOWED = "Sender domain not allowed for this tenant"


def _problem(mailbox: Mailbox, allowed: frozenset[str]) -> str | None:
    """Why this mailbox may not be used as a sender, or C{None}."""
    if mailbox.route is not None:
        return "source routes are not accepted"
    if mailbox.quoted and "@" in mailbox.local:
        return "quoted local part with @"
    if mailbox.isLiteral or not domainAllowed(mailbox.domain, allowed):
        return NOT_ALLOWED
    return None


class SenderDomainPolicy(Policy):
    """MAIL FROM and every header From: author in the tenant's domains."""

    def mailFrom(self, client, transaction):
        sender = transaction.sender
        if sender is None:
            if client.tenant.allowBounces:
                return CONTINUE
            return reject(550, "5.7.1", "Null sender not allowed for this tenant")
        problem = _problem(sender, client.tenant.domains)
        return CONTINUE if problem is None else reject(550, "5.7.1", problem)

    def headers(self, client, transaction, headers):
        values = headers.get("From")
        if len(values) != 1:
            return reject(550, "5.7.1", "Message must have exactly one From header")
        try:
            authors = parseMailboxList(values[0])
        except AddressError as e:
            return reject(550, "5.7.1", f"Unparseable From header: {e}")
        for author in authors:
            problem = _problem(author, client.tenant.domains)
            if problem is not None:
                return reject(550, "5.7.1", f"From header: {problem}")
        return CONTINUE
