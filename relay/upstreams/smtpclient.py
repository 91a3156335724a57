"""
Our SMTP client: the protocol that talks to an upstream, and the
L{IUpstreamSession} built on it.

Not C{twisted.mail.smtp.ESMTPClient}: that client dot-stuffs wrongly at
chunk boundaries and keeps plaintext buffered across STARTTLS.  This one
matches replies to commands in order (so commands may be pipelined), discards
whatever follows the upstream's C{220} to STARTTLS (CVE-2011-0411 class) and
stuffs dots correctly however the message is split.
"""

from __future__ import annotations

from collections import deque

from OpenSSL.SSL import Error as TLSError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.core.reply import Reply
from relay.core.twistedprivate import noDelay, writeNow
from relay.seams.interfaces import IUpstreamSession, IUpstreamTLS
from relay.seams.types import IStreamTransport
from relay.seams.upstream import UpstreamError

__all__ = ["SMTPClientProtocol", "SMTPSession"]

MAX_REPLY_LINE = 2048  # generous: RFC 5321 §4.5.3.1.5 allows 512
MAX_REPLY_LINES = 100


class SMTPClientProtocol(Protocol):
    """
    Sends command lines and fires one Deferred per reply, in order.

    The server has C{timeout} seconds for each reply, counted from the
    command (or from the reply before it, when commands are pipelined).  One
    timer per connection keeps that deadline: it is moved, not re-created,
    as replies come in.

    @ivar greeting: fires with the server's greeting reply.
    """

    transport: IStreamTransport

    def __init__(self, clock: IReactorTime, timeout: float):
        self._clock = clock
        self._timeout = timeout
        self._buffer = b""
        self._lines: list[bytes] = []
        self._waiting: deque[tuple[Deferred[Reply], bool]] = deque()
        self._since = 0.0  # when the oldest waiting reply's time started
        self._timer: IDelayedCall | None = None
        self._error: UpstreamError | None = None
        self.lost = False
        self.greeting = self._expect(False)

    @property
    def alive(self) -> bool:
        return self._error is None and bool(self.connected)

    def connectionMade(self) -> None:
        noDelay(self.transport)

    def send(self, line: bytes, discardAfter: bool = False) -> Deferred[Reply]:
        """
        Send one command line (without CRLF).

        @param discardAfter: drop any bytes the server sent after this
            command's reply (STARTTLS).
        @return: a Deferred firing with the reply or failing with
            L{UpstreamError}.
        """
        if self._error is not None:
            return fail(self._error)
        writeNow(self.transport, line + b"\r\n")
        return self._expect(discardAfter)

    def expectReply(self) -> Deferred[Reply]:
        """Wait for one more reply without sending a command (end of data)."""
        if self._error is not None:
            return fail(self._error)
        return self._expect(False)

    def abort(self, message: str) -> None:
        """Drop the connection at once; waiting commands fail."""
        self._failAll(UpstreamError("lost", message))
        self.transport.abortConnection()

    def _expect(self, discardAfter: bool) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        if not self._waiting:
            self._since = self._clock.seconds()
        self._waiting.append((d, discardAfter))
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._checkDeadline)
        return d

    def _checkDeadline(self) -> None:
        """The timer fired: fail if the oldest reply is overdue, else wait on."""
        self._timer = None
        if not self._waiting:
            return
        left = self._since + self._timeout - self._clock.seconds()
        if left > 0:
            self._timer = self._clock.callLater(left, self._checkDeadline)
        else:
            self._broken("timeout", f"no reply within {self._timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._error is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._broken("protocol", "reply line too long")
                return
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            self._lines.append(line)
            if line[3:4] == b"-":
                if len(self._lines) > MAX_REPLY_LINES:
                    self._broken("protocol", "reply too long")
                continue
            lines, self._lines = self._lines, []
            try:
                reply = Reply.parse(lines)
            except ValueError as e:
                self._broken("protocol", f"garbage from upstream: {e}")
                return
            if not self._waiting:
                self._broken("protocol", "reply without a command")
                return
            d, discardAfter = self._waiting.popleft()
            if self._waiting:
                self._since = self._clock.seconds()
            if discardAfter:
                self._buffer = b""
            d.callback(reply)

    def _broken(self, kind: str, message: str) -> None:
        """The conversation cannot go on: fail every waiting command, drop."""
        self._failAll(UpstreamError(kind, message))
        self.transport.abortConnection()

    def _failAll(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            d, _ = self._waiting.popleft()
            d.errback(Failure(self._error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if reason.check(TLSError):
            self._failAll(UpstreamError("tls", f"TLS failed: {reason.getErrorMessage()}"))
        else:
            self._failAll(UpstreamError("lost", "upstream closed the connection"))


@implementer(IUpstreamSession, IUpstreamTLS)
class SMTPSession:
    """
    One SMTP (or LMTP) connection ready for transactions.

    @ivar extensions: the EHLO keywords the upstream offered, upper case,
        mapped to their parameters.
    @ivar tlsVersion: the TLS version in use, or C{None}.
    """

    def __init__(self, protocol: SMTPClientProtocol, extensions: dict[str, str], tlsVersion: str | None = None):
        self._protocol = protocol
        self.extensions = extensions
        self.tlsVersion = tlsVersion
        self._atLineStart = True
        self._inTransaction = False  # the server holds a transaction: RSET before the next one

    @property
    def alive(self) -> bool:
        return self._protocol.alive

    def _parameters(self, parameters: dict[str, str | None]) -> bytes:
        """The MAIL parameters this upstream understands."""
        passed = []
        size, body = parameters.get("SIZE"), parameters.get("BODY")
        if size is not None and "SIZE" in self.extensions:
            passed.append(b" SIZE=" + size.encode("ascii"))
        if body is not None and "8BITMIME" in self.extensions:
            passed.append(b" BODY=" + body.encode("ascii"))
        return b"".join(passed)

    def mailFrom(self, sender: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        self._inTransaction = True
        return self._protocol.send(b"MAIL FROM:<" + sender.encode("ascii") + b">" + self._parameters(parameters))

    def rcptTo(self, recipient: str, parameters: dict[str, str | None]) -> Deferred[Reply]:
        return self._protocol.send(b"RCPT TO:<" + recipient.encode("ascii") + b">")

    def data(self) -> Deferred[Reply]:
        self._atLineStart = True
        return self._protocol.send(b"DATA")

    def write(self, data: bytes) -> None:
        """Dot-stuff and send message bytes (RFC 5321 §4.5.2)."""
        if not data:
            return
        if self._atLineStart and data[:1] == b".":
            data = b"." + data
        data = data.replace(b"\n.", b"\n..")
        self._atLineStart = data[-1:] == b"\n"
        writeNow(self._protocol.transport, data)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._protocol.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self._protocol.lost:  # a closed TLS transport has nothing to unregister from
            self._protocol.transport.unregisterProducer()

    def end(self) -> Deferred[list[Reply]]:
        writeNow(self._protocol.transport, b".\r\n" if self._atLineStart else b"\r\n.\r\n")
        return self._endReplies()

    def _endReplies(self) -> Deferred[list[Reply]]:
        """
        Wait for the replies to the final dot: one for the whole message
        (LMTP overrides this: one per accepted recipient).
        """
        return self._protocol.expectReply().addCallback(self._ended)

    def _ended(self, reply: Reply) -> list[Reply]:
        self._inTransaction = False  # answered: the server has forgotten the transaction (RFC 5321 §4.1.1.4)
        return [reply]

    def abort(self) -> None:
        self._protocol.abort("transaction aborted")

    def reset(self) -> Deferred[None]:
        """
        C{RSET} when the server still holds part of a transaction (MAIL or
        RCPT accepted, DATA refused, ...); after an answered final dot it
        holds nothing, and no round trip is spent.
        """
        self._atLineStart = True
        if not self._inTransaction:
            return succeed(None)

        def checked(reply: Reply) -> None:
            if reply.code != 250:
                raise UpstreamError("protocol", f"RSET refused: {reply.text}", reply)
            self._inTransaction = False

        return self._protocol.send(b"RSET").addCallback(checked)

    def close(self) -> Deferred[None]:
        if not self.alive:
            return succeed(None)
        d = self._protocol.send(b"QUIT")
        d.addBoth(lambda _: self._protocol.transport.loseConnection())
        return d.addBoth(lambda _: None)
