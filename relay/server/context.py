"""
What every inbound session shares within one relay process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker

from relay.policy.chain import PolicyChain
from relay.server.guard import ConnectionGuard
from relay.telemetry.report import Reporter
from relay.upstreams.pool import UpstreamPool

__all__ = ["ServerContext"]


@dataclass(frozen=True)
class ServerContext:
    """
    @ivar reactor: the reactor (time and TCP); never the global one.
    @ivar hostname: the relay's name in the greeting, EHLO and trace header.
    @ivar directory: the tenants in memory (L{relay.runtime.directory.Directory}).
    @ivar checker: verifies AUTH credentials; fires with a tenant name.
    @ivar policies: the policy chain every session runs.
    @ivar upstreams: opens and reuses upstream sessions.
    @ivar tls: server TLS options for STARTTLS, or C{None} when the relay
        has no certificate.
    @ivar allowInsecureAuth: offer AUTH without TLS (loopback tests only).
    @ivar reporter: metrics and log lines.
    @ivar guard: connection caps and AUTH failure penalties.
    @ivar maxMessageSize: the SIZE limit, in octets (a tenant may have less).
    @ivar maxRecipients: recipients per message (a tenant may have fewer).
    @ivar idleTimeout: seconds a client may take to send its next command
        (RFC 5321 §4.5.3.2.7); bytes of an unfinished line do not count.
    @ivar lineTimeout: seconds a command line may take from its first byte
        to its end (slowloris).
    @ivar maxErrors: refused or unknown commands before 421 and close.
    @ivar handshakeTimeout: seconds for a TLS handshake (and a PROXY header).
    @ivar dataTimeout: seconds the whole DATA phase of one message may take.
    @ivar upstreamTimeout: seconds the upstream may stall a message's stream
        (not reading) before the transaction is given up.
    """

    reactor: Any
    hostname: str
    directory: Any
    checker: ICredentialsChecker
    policies: PolicyChain
    upstreams: UpstreamPool
    reporter: Reporter
    guard: ConnectionGuard
    tls: Any = None
    allowInsecureAuth: bool = False
    maxMessageSize: int = 50 * 1024 * 1024
    maxRecipients: int = 1000
    idleTimeout: float = 300.0
    lineTimeout: float = 60.0
    maxErrors: int = 20
    handshakeTimeout: float = 10.0
    dataTimeout: float = 600.0
    upstreamTimeout: float = 60.0
