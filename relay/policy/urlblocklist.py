"""
A streaming content check, the model for others: refuses a message that
mentions a URL whose host is in the tenant's blocklist (a blocklisted domain
covers its subdomains).

The body is never buffered: each chunk is scanned together with the tail of
the previous one, so a URL split across chunks is still found.  Quoted-
printable soft line breaks are removed before scanning; base64-encoded parts
are not decoded.
"""

from __future__ import annotations

import re

from relay.plugin import CONTINUE, Policy, reject

NOTES = "url-blocklist"  # its key in transaction.notes
__all__ = ["URLBlocklistPolicy"]

_URL = re.compile(
    rb"(?:(?:https?|ftp)://(?:[^\s/@?#]{0,64}@)?|(?<![A-Za-z0-9.-])www\.)([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))",
    re.IGNORECASE,
)
# Longer than any URL prefix the pattern looks at: scheme, user info, host.
TAIL = 400
REFUSED = reject(550, "5.7.1", "Message content refused: it links to a blocked domain")


def _blocked(host: str, blocklist: frozenset[str]) -> bool:
    labels = host.split(".")
    return any(".".join(labels[i:]) in blocklist for i in range(len(labels)))


class URLBlocklistPolicy(Policy):
    """Refuses messages linking to the tenant's blocklisted domains, found while streaming."""

    def headers(self, client, transaction, headers):
        return self._scan(client, transaction, headers.raw)

    def bodyChunk(self, client, transaction, chunk):
        return self._scan(client, transaction, chunk)

    def _scan(self, client, transaction, data: bytes):
        blocklist = client.tenant.blocklist
        if not blocklist:
            return CONTINUE
        text = (transaction.notes.get(NOTES, b"") + data).replace(b"=\r\n", b"")
        for match in _URL.finditer(text):
            host = match.group(1).rstrip(b".-").decode("ascii").lower()
            if _blocked(host, blocklist):
                return REFUSED
        transaction.notes[NOTES] = text[-TAIL:]
        return CONTINUE
