"""
What policies and upstreams are told about a connection and a transaction.

These objects are created and updated by the relay; plugins read them and
keep their own per-transaction state in L{Transaction.notes}.
"""

from __future__ import annotations

import os
import random
import time
from base64 import b32encode
from dataclasses import dataclass, field
from typing import Any

from relay.core.address import Mailbox
from relay.core.tenant import Tenant

__all__ = ["ClientInfo", "Transaction", "newQueueId"]

# Queue ids need to be unique, not secret: a generator seeded once from the
# system's randomness saves a system call per message.
_random = random.Random(os.urandom(16))


def newQueueId() -> str:
    """
    A short unique identifier for a transaction: sortable by time (the first
    seven characters encode the second) and unique within a process and
    across processes (eight random characters).
    """
    seconds = int(time.time()).to_bytes(5, "big")
    return b32encode(seconds + _random.randbytes(5)).decode("ascii").rstrip("=")


@dataclass(eq=False)
class ClientInfo:
    """
    One inbound connection, as far as the relay knows it.

    @ivar sessionId: unique for this connection, for logs.
    @ivar address: the client's IP address (after PROXY protocol, if any).
    @ivar port: the client's TCP port.
    @ivar helo: the name given with EHLO or HELO, or C{None} before it.
    @ivar esmtp: the client used EHLO.
    @ivar tls: the TLS version in use (C{"TLSv1.3"}) or C{None}.
    @ivar tenant: the tenant the client is acting as, once known (after AUTH,
        or at connection time for a C{--no-auth} network).
    @ivar username: the login used for AUTH, if any.
    """

    sessionId: str
    address: str
    port: int
    helo: str | None = None
    esmtp: bool = False
    tls: str | None = None
    tenant: Tenant | None = None
    username: str | None = None


@dataclass(eq=False)
class Transaction:
    """
    One message on its way through the relay, from MAIL FROM to the end of
    data or a reset.

    @ivar queueId: the identifier in logs, the trace header and our replies.
    @ivar sender: the reverse-path, or C{None} for the null sender C{<>}.
    @ivar parameters: the MAIL FROM ESMTP parameters, keys upper case.
    @ivar recipients: the recipients the upstream accepted so far, in order
        (L{relay.core.address.Recipient}s: mailboxes with their RCPT
        parameters).
    @ivar size: message bytes received so far (the trace header not counted).
    @ivar notes: free space for plugins; by convention keyed by plugin name.
    @ivar dataStarted: when the client sent DATA (reactor time), or C{None}.
    @ivar messageId: the message's C{Message-ID} field, once its header block arrived.
    """

    queueId: str
    sender: Mailbox | None
    parameters: dict[str, str | None]
    recipients: list[Mailbox] = field(default_factory=list)
    size: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    dataStarted: float | None = None
    messageId: str | None = None

    @property
    def utf8(self) -> bool:
        """The client declared SMTPUTF8 (RFC 6531): addresses and headers may be UTF-8."""
        return "SMTPUTF8" in self.parameters
