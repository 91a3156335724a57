"""
What the relay gives an upstream type (L{UpstreamContext}) and how an
upstream type says the conversation broke (L{UpstreamError}).  Plugin
authors import both from L{relay.plugin}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.python.threadpool import ThreadPool

from relay.core.reply import Reply
from relay.seams.types import IRelayReactor

__all__ = ["UpstreamContext", "UpstreamError"]


class UpstreamError(Exception):
    """
    The conversation with an upstream broke down.

    @ivar kind: one word for logs and the C{upstream_errors_total} metric:
        C{"connect"} (unreachable or refused), C{"timeout"}, C{"lost"}
        (connection dropped), C{"protocol"} (garbage), C{"tls"}, C{"auth"},
        C{"refused"} (it answered, but will not take mail from us: greeting
        or EHLO refused), C{"busy"} (connection cap reached),
        C{"nonconforming"} (the type gave a session that does not provide
        L{relay.plugin.IUpstreamSession}).
    @ivar reply: the upstream's reply when it gave one.
    """

    def __init__(self, kind: str, message: str, reply: Reply | None = None):
        super().__init__(message)
        self.kind = kind
        self.reply = reply


@dataclass(frozen=True, kw_only=True)
class UpstreamContext:
    """
    What an upstream type needs from the relay to open sessions.

    @ivar reactor: the reactor (time, TCP, SSL, UNIX); never import the global.
    @ivar hostname: the relay's own name, for EHLO.
    @ivar threadPool: a thread pool for blocking work (file I/O).
    @ivar timeout: default seconds to wait for any one reply (URL C{?timeout=}
        overrides); kept below the clients' own timeouts (RFC 5321 §4.5.3.2).
    @ivar finalTimeout: seconds to wait for the reply to the end of data
        (C{--upstream-final-timeout}): under the 10 minutes the client waits
        for ours (RFC 5321 §4.5.3.2.6).
    """

    reactor: IRelayReactor
    hostname: str
    threadPool: ThreadPool
    timeout: float = 60.0
    finalTimeout: float = 540.0
