"""
Recipients: a cap per message, and no address forms an upstream could
reinterpret as a route to somewhere else (the classic open-relay tricks).
"""

from __future__ import annotations

from relay.plugin import CONTINUE, Policy, reject, tempfail

__all__ = ["RecipientPolicy"]


def _reinterpretable(recipient) -> str | None:
    """Why an upstream might route this address elsewhere, or C{None}."""
    if recipient.route is not None:
        return "source routes are not accepted"
    if recipient.quoted:
        return "quoted local parts are not accepted"
    if "%" in recipient.local or "!" in recipient.local:
        return "% and ! routing is not accepted"
    if recipient.isLiteral:
        return "address literals are not accepted"
    return None


class RecipientPolicy(Policy):
    """Recipient forms an upstream could reroute, and the tenant's cap per message."""

    def rcptTo(self, client, transaction, recipient):
        problem = _reinterpretable(recipient)
        if problem is not None:
            return reject(553, "5.1.3", f"Recipient address rejected: {problem}")
        cap = client.tenant.maxRecipients
        if cap is not None and len(transaction.recipients) >= cap:
            # RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
            return tempfail(452, "4.5.3", f"Too many recipients (at most {cap} per message)")
        return CONTINUE
