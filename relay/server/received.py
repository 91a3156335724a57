"""
The trace header the relay prepends to every message (RFC 5321 §4.4).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

from relay.core.envelope import ClientInfo, Transaction

__all__ = ["traceHeader"]

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")


def _protocol(client: ClientInfo, utf8: bool) -> str:
    """
    RFC 3848 'with' keywords: ESMTP, plus S for TLS, plus A for AUTH; UTF8SMTP
    and its S and A forms for an SMTPUTF8 transaction (RFC 6531 §4.3).
    """
    if not client.esmtp:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if client.tls else "") + ("A" if client.username else "")


@lru_cache(maxsize=2)
def _date(second: int) -> str:
    """An RFC 5322 date, made once per second however many messages pass."""
    return datetime.fromtimestamp(second, UTC).strftime("%a, %d %b %Y %H:%M:%S %z")


def traceHeader(client: ClientInfo, transaction: Transaction, hostname: str, now: float) -> bytes:
    """
    The C{Received:} field for this transaction at time C{now} (seconds
    since the epoch), folded, ending in CRLF.
    The client's HELO name and address are reduced to safe characters
    (nothing the client chose can end or fold the field); a single
    recipient is named, several are not (they would disclose each other).
    """
    helo = _UNSAFE.sub("?", client.helo or "unknown")[:255]
    address = _UNSAFE.sub("?", client.address)  # parsed already (PROXY, socket); checked here all the same
    tls = f" (using {client.tls})" if client.tls else ""
    recipient = f"\r\n\tfor <{transaction.recipients[0]}>" if len(transaction.recipients) == 1 else ""
    when = _date(int(now))
    return (
        f"Received: from {helo} ([{address}])\r\n"
        f"\tby {hostname} (smtprelay) with {_protocol(client, transaction.utf8)}{tls}\r\n"
        f"\tid {transaction.queueId}{recipient}; {when}\r\n"
    ).encode("utf-8" if transaction.utf8 else "ascii")
