"""
What the relay gives an upstream type (L{UpstreamContext}) and how an
upstream type says the conversation broke (L{UpstreamError}).  Plugin
authors import both from L{relay.plugin}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.python.threadpool import ThreadPool

from relay.core.reply import Reply
from relay.seams.interfaces import IAccessTokens
from relay.seams.types import IRelayReactor

__all__ = ["TokenError", "UpstreamContext", "UpstreamError"]


class UpstreamError(Exception):
    """
    The conversation with an upstream broke down.

    @ivar kind: one word for logs and the C{upstream_errors_total} metric:
        C{"connect"} (unreachable or refused), C{"timeout"}, C{"lost"}
        (connection dropped), C{"protocol"} (garbage), C{"tls"}, C{"auth"},
        C{"refused"} (it answered, but will not take mail from us: greeting
        or EHLO refused), C{"busy"} (connection cap reached),
        C{"nonconforming"} (the type gave a session that does not provide
        L{relay.plugin.IUpstreamSession}), C{"token"} (no OAuth access token:
        the provider refused or could not be reached; C{reply} is what the
        client should be told).
    @ivar reply: the upstream's reply when it gave one.
    """

    def __init__(self, kind: str, message: str, reply: Reply | None = None):
        super().__init__(message)
        self.kind = kind
        self.reply = reply


class TokenError(Exception):
    """
    No access token could be had.

    @ivar kind: C{"unavailable"} (endpoint unreachable, timed out, 5xx) or
        C{"refused"} (the provider answered with an OAuth error).
    @ivar error: the provider's error code (C{invalid_client}), if any.
    """

    def __init__(self, kind: str, message: str, error: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.error = error

    @property
    def reply(self) -> Reply:
        """What a client is told when no other upstream took its message."""
        if self.kind == "refused":
            return Reply.of(454, "4.7.0", f"Upstream OAuth token refused: {self}")
        return Reply.of(451, "4.4.1", f"Upstream OAuth token endpoint unavailable: {self}")


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
    @ivar tokens: OAuth 2.0 access tokens for C{url.credentials.oauth}
        (L{IAccessTokens}: C{token(client)} gives a Deferred
        L{relay.core.credentials.AccessToken} or fails with L{TokenError});
        C{None} where the relay has none to give.
    """

    reactor: IRelayReactor
    hostname: str
    threadPool: ThreadPool
    timeout: float = 60.0
    finalTimeout: float = 540.0
    tokens: IAccessTokens | None = None
