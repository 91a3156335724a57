"""
The C{lmtp} and C{lmtp+unix} upstream types (RFC 2033): delivery straight
into a mail store's delivery agent (Dovecot, Cyrus, Postfix's C{lmtp}
service).

URL forms::

    lmtp://host[:24]                TCP; STARTTLS when offered, as smtp://
    lmtp+unix:///path/to/socket     a local socket: no TLS, no credentials

C{lmtp://} takes the options of C{smtp://} (C{verify}, C{ca}, C{timeout},
C{auth}; credentials are only ever sent over TLS) and C{recipients=one|many};
C{lmtp+unix://} takes only C{timeout} and C{recipients}.  The client is ours
(L{relay.upstreams.smtpclient}) with C{LHLO} in place of C{EHLO} and no
fallback to C{HELO}.

After the final dot an LMTP server answers once per recipient it accepted
at RCPT, in RCPT order, so one message can succeed for some recipients and
fail for others, while an SMTP client gets one reply per message.  So an
LMTP transaction takes one recipient: later RCPTs get C{452 4.5.3} (RFC 5321
§4.5.3.1.10), and the client sends them in another transaction; every
recipient is then told exactly what the upstream said of it.  With
C{?recipients=many} a transaction takes them all, and the relay answers its
client with one reply (L{relay.server.session.finalReply}): 250 only if
every recipient succeeded; when some did and others did not, the first
temporary failure, or a 451 of our own when all the failures were
permanent (never a 5xx for a copy that was delivered); when all failed, the
first temporary failure, else the first permanent one.  The client's retry
then delivers again to the recipients that had succeeded: a duplicate,
never a loss (the same ambiguity as a lost reply to the final dot, RFC
1047).  The whole set of replies must arrive within the final timeout.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.urls import UpstreamURL
from relay.seams.interfaces import IUpstreamSession, IUpstreamTLS, IUpstreamType
from relay.seams.upstream import UpstreamContext
from relay.upstreams.smtp import (
    OPTIONS,
    SetupNotes,
    connectSMTP,
    replyTimeout,
    tcpEndpoint,
    validateOptions,
    validateServerURL,
)
from relay.upstreams.smtpclient import SMTPSession

__all__ = ["LMTPSession", "LMTPUpstreamType"]

ONE_RECIPIENT = Reply.of(452, "4.5.3", "One recipient per LMTP transaction: send the others in another one")


@implementer(IUpstreamSession, IUpstreamTLS)
class LMTPSession(SMTPSession):
    """
    An LMTP connection: an SMTP session that counts the recipients the
    upstream accepted and expects one end-of-data reply for each of them
    (RFC 2033 §4.2).
    """

    many = False  # ?recipients=many: every recipient in one transaction

    def _forget(self) -> None:
        super()._forget()
        self._accepted = 0
        self._asked = 0

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        if self._asked and not self.many:
            return succeed(ONE_RECIPIENT)
        self._asked += 1
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
        replies = [self._protocol.expectReply(self._finalTimeout) for _ in range(self._accepted)]
        return gatherResults(replies, consumeErrors=True).addErrback(lambda failure: failure.value.subFailure)


@implementer(IUpstreamType)
class LMTPUpstreamType:
    """Relays into an LMTP server over TCP or a local socket."""

    name = "lmtp"
    schemes = ("lmtp", "lmtp+unix")

    def validate(self, url: UpstreamURL) -> None:
        if url.option("recipients", "one") not in ("one", "many"):
            raise ValueError("recipients must be one or many")
        if url.scheme != "lmtp+unix":
            validateServerURL(url, self.schemes, "LMTP", OPTIONS | {"recipients"})
            return
        if url.host or not os.path.isabs(url.path):
            raise ValueError("an lmtp+unix URL names an absolute socket path: lmtp+unix:///run/dovecot/lmtp")
        if url.username is not None or set(url.options) - {"timeout", "recipients"}:
            raise ValueError(
                "an lmtp+unix URL takes only ?timeout= and ?recipients= (no TLS or credentials on a local socket)"
            )
        validateOptions(url, {"timeout", "recipients"})

    def open(
        self, url: UpstreamURL, context: UpstreamContext, notes: SetupNotes | None = None
    ) -> Deferred[LMTPSession]:
        """Connect and say LHLO; C{notes} filled in as it goes (L{relay.upstreams.diagnose})."""
        local = url.scheme == "lmtp+unix"
        endpoint: IStreamClientEndpoint
        if local:
            endpoint, peer = UNIXClientEndpoint(context.reactor, url.path, replyTimeout(url, context)), url.path
        else:
            endpoint, peer = tcpEndpoint(url, context)
        greet = b"LHLO " + context.hostname.encode("ascii")
        d = Deferred.fromCoroutine(
            connectSMTP(endpoint, peer, url, context, greet, LMTPSession, startTLS=not local, notes=notes)
        )
        return d.addCallback(self._configured, url.option("recipients", "one") == "many")

    def _configured(self, session: LMTPSession, many: bool) -> LMTPSession:
        session.many = many
        return session
