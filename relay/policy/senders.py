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
BOUNCE_MANAGEMENT = "bnc.salesforce.com"  # Salesforce Bounce Management's envelope senders
NOTES = "sender-domain"  # its key in transaction.notes


def _problem(mailbox: Mailbox, allowed: frozenset[str]) -> str | None:
    """Why this mailbox may not be used as a sender, or C{None}."""
    if mailbox.route is not None:
        return "source routes are not accepted"
    if mailbox.quoted and "@" in mailbox.local:
        return "quoted local part with @"
    if mailbox.isLiteral or not domainAllowed(mailbox.domain, allowed):
        return NOT_ALLOWED
    return None


def _bounceManagement(mailbox: Mailbox) -> bool:
    """A Salesforce Bounce Management envelope sender: a domain under bnc.salesforce.com."""
    domain = mailbox.domain.lower()
    return domain == BOUNCE_MANAGEMENT or domain.endswith("." + BOUNCE_MANAGEMENT)


class SenderDomainPolicy(Policy):
    """
    MAIL FROM and every header From: author in the tenant's domains.

    Salesforce's Bounce Management sends with an envelope sender under
    C{bnc.salesforce.com} (so that bounces go back to Salesforce): for a
    tenant with an org id such a sender passes when the header C{From:} is
    one of the tenant's domains (always checked) and C{X-SFDC-LK} carries
    the tenant's org (checked here too, whether or not the salesforce-org
    policy runs).
    """

    def mailFrom(self, client, transaction):
        sender = transaction.sender
        if sender is None:
            if client.tenant.allowBounces:
                return CONTINUE
            return reject(550, "5.7.1", "Null sender (<>) not allowed for this tenant")
        if client.tenant.orgId is not None and _bounceManagement(sender) and sender.route is None:
            transaction.notes[NOTES] = "bounce-management"
            return CONTINUE
        problem = _problem(sender, client.tenant.domains)
        return CONTINUE if problem is None else reject(550, "5.7.1", problem)

    def headers(self, client, transaction, headers):
        values = headers.get("From")
        if len(values) != 1:
            return reject(550, "5.7.1", "Message must have exactly one From header")
        value = values[0]
        if transaction.utf8:  # RFC 6532: header fields in UTF-8 (HeaderBlock decodes them as Latin-1)
            try:
                value = value.encode("latin-1").decode("utf-8")
            except UnicodeError:
                return reject(550, "5.6.7", "From header is not UTF-8")
        try:
            authors = parseMailboxList(value, utf8=transaction.utf8)
        except AddressError as e:
            return reject(550, "5.7.1", f"Unparseable From header: {e}")
        for author in authors:
            problem = _problem(author, client.tenant.domains)
            if problem is not None:
                return reject(550, "5.7.1", f"From header: {problem}")
        if transaction.notes.get(NOTES) == "bounce-management":
            marks = headers.get("X-SFDC-LK")
            if len(marks) != 1 or marks[0].strip()[:15] != client.tenant.orgId[:15]:
                return reject(550, "5.7.1", "Bounce Management sender: X-SFDC-LK does not match this tenant's org")
        return CONTINUE
