"""
The C{lmtp} and C{lmtp+unix} upstream types (RFC 2033): delivery straight
into a mail store's delivery agent (Dovecot, Cyrus, Postfix's C{lmtp}
service).

URL forms::

    lmtp://host[:24]                TCP; STARTTLS when offered, as smtp://
    lmtp+unix:///path/to/socket     a local socket: no TLS, no credentials

C{lmtp://} takes the options of C{smtp://} (C{verify}, C{ca}, C{timeout},
C{auth}; credentials are only ever sent over TLS); C{lmtp+unix://} takes only
C{timeout}.  The client is ours (L{relay.upstreams.smtpclient}) with C{LHLO}
in place of C{EHLO} and no fallback to C{HELO}.

After the final dot an LMTP server answers once per recipient it accepted at
RCPT, in RCPT order, so one message can succeed for some recipients and fail
for others.  L{LMTPSession.end} returns all those replies and the relay
answers its client with one of them (L{relay.server.session.finalReply}):
250 only if every recipient succeeded, else the first temporary failure (so
the client retries), else the first permanent failure.  Nothing is silently
lost: a recipient that failed is always reported as a failure.  But SMTP
has one reply per message, so after a mixed result the client's retry (or
bounce) covers the whole message, and a retry delivers again to the
recipients that had succeeded: a duplicate, never a loss — the same
ambiguity as a lost reply to the final dot (RFC 1047).  The whole set of
replies must arrive within the timeout, counted from the final dot.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamTLS, IUpstreamType
from relay.seams.upstream import UpstreamContext
from relay.upstreams.smtp import connectSMTP, replyTimeout, tcpEndpoint, validateOptions, validateServerURL
from relay.upstreams.smtpclient import SMTPSession

__all__ = ["LMTPSession", "LMTPUpstreamType"]


@implementer(IUpstreamSession, IUpstreamTLS)
class LMTPSession(SMTPSession):
    """
    An LMTP connection: an SMTP session that counts the recipients the
    upstream accepted and expects one end-of-data reply for each of them
    (RFC 2033 §4.2).
    """

    _accepted = 0

    def mailFrom(self, sender: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        self._accepted = 0
        return super().mailFrom(sender, parameters)

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        return super().rcptTo(recipient, parameters).addCallback(self._counted)

    def _counted(self, reply: Reply) -> Reply:
        if reply.code // 100 == 2:
            self._accepted += 1
        return reply

    def _endReplies(self) -> Deferred[list[Reply]]:
        """
        One reply per accepted recipient, in RCPT order; fails with the
        first L{relay.seams.upstream.UpstreamError} if the conversation breaks
        before all of them arrived.
        """
        replies = [self._protocol.expectReply() for _ in range(self._accepted)]
        d = gatherResults(replies, consumeErrors=True).addErrback(lambda failure: failure.value.subFailure)
        return d.addCallback(self._allEnded)

    def _allEnded(self, replies: list[Reply]) -> list[Reply]:
        self._inTransaction = False
        return replies


@implementer(IUpstreamType)
class LMTPUpstreamType:
    """Relays into an LMTP server over TCP or a local socket."""

    name = "lmtp"
    schemes = ("lmtp", "lmtp+unix")

    def validate(self, url: UpstreamURL) -> None:
        if url.scheme != "lmtp+unix":
            validateServerURL(url, self.schemes, "LMTP")
            return
        if url.host or not os.path.isabs(url.path):
            raise ValueError("an lmtp+unix URL names an absolute socket path: lmtp+unix:///run/dovecot/lmtp")
        if url.username is not None or set(url.options) - {"timeout"}:
            raise ValueError("an lmtp+unix URL takes only ?timeout= (no TLS or credentials on a local socket)")
        validateOptions(url)

    def open(self, url: UpstreamURL, context: UpstreamContext) -> Deferred[LMTPSession]:
        local = url.scheme == "lmtp+unix"
        endpoint: IStreamClientEndpoint
        if local:
            endpoint, peer = UNIXClientEndpoint(context.reactor, url.path, replyTimeout(url, context)), url.path
        else:
            endpoint, peer = tcpEndpoint(url, context)
        greet = b"LHLO " + context.hostname.encode("ascii")
        return Deferred.fromCoroutine(connectSMTP(endpoint, peer, url, context, greet, LMTPSession, startTLS=not local))
